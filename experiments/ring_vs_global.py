"""Compares the ring and global runs of configs/studies/siglip_ring_vs_global.py step by
step, seed by seed: per metric, the largest absolute difference ring - global over every
logged step and seed (``train/loss`` at each of the 100 steps; the evals at 50 and 100),
and the final values (mean over seeds) of both, as a markdown table (stdout).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m multimodal_ssl.sweep \\
        --config=configs/studies/siglip_ring_vs_global.py --workdir=/tmp/ring_vs_global
    python experiments/ring_vs_global.py --workdir=/tmp/ring_vs_global
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep.curves import curve  # noqa: E402
from multimodal_ssl.sweep.runner import read_metrics  # noqa: E402

SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    pairs = [tuple(os.path.join(args.workdir, f"impl={impl},seed={seed}")
                   for impl in ("ring", "global")) for seed in SEEDS]
    pairs = [(a, b) for a, b in pairs if os.path.exists(a) and os.path.exists(b)]
    if not pairs:
        sys.exit(f"error: no impl=ring,seed=S / impl=global,seed=S pair in {args.workdir}")
    keys = ["train/loss"] + sorted(
        {k for m in read_metrics(pairs[0][0]).values() for k in m if k.startswith("eval/")}
    )
    print("| metric | seeds | steps compared | max abs difference (ring - global) "
          "| final ring (mean) | final global (mean) |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        diffs, finals, compared = [], ([], []), 0
        for ring, glob in pairs:
            a, b = curve(ring, key), curve(glob, key)
            steps = sorted(set(a) & set(b))
            if not steps:
                continue
            compared += len(steps)
            diffs.append(max(abs(a[s] - b[s]) for s in steps))
            finals[0].append(a[steps[-1]])
            finals[1].append(b[steps[-1]])
        if diffs:
            ring_final, glob_final = (sum(f) / len(f) for f in finals)
            print(f"| {key} | {len(diffs)} | {compared} | {max(diffs):.2e} | {ring_final:.4f} "
                  f"| {glob_final:.4f} |")


if __name__ == "__main__":
    main()
