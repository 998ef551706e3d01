"""Compares the ring and global runs of configs/studies/siglip_ring_vs_global.py step by
step: the largest absolute difference of ``train/loss`` over all logged steps, and of
every eval metric, as a markdown table (stdout).

    python experiments/ring_vs_global.py --workdir=/tmp/ring_vs_global
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep.runner import read_metrics  # noqa: E402


def series(run_dir: str, key: str) -> dict[int, float]:
    return {s: m[key] for s, m in read_metrics(run_dir).items() if key in m}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    ring, glob = (os.path.join(args.workdir, f"impl={i}") for i in ("ring", "global"))
    keys = ["train/loss"] + sorted(
        {k for m in read_metrics(ring).values() for k in m if k.startswith("eval/")}
    )
    print("| metric | steps compared | max abs difference (ring - global) | final ring "
          "| final global |")
    print("|---|---|---|---|---|")
    for key in keys:
        a, b = series(ring, key), series(glob, key)
        steps = sorted(set(a) & set(b))
        if not steps:
            continue
        diff = max(abs(a[s] - b[s]) for s in steps)
        print(f"| {key} | {len(steps)} | {diff:.2e} | {a[steps[-1]]:.4f} | {b[steps[-1]]:.4f} |")


if __name__ == "__main__":
    main()
