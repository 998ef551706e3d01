"""The bias-init study's contrasts (configs/studies/siglip_bias_init.py), paired by seed:
at every eval step, the zero-shot top-1 and image->text R@1 difference between two
settings, as mean ± std over the seeds (a seed's runs share the initial towers and the
batches, so the pairs remove that spread), with whether the difference is clear
(``aggregate.clear_sign`` on the paired differences: > 0.05 and > 3 std).

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_bias_init.py \\
        --workdir=/tmp/bias_init --parallel=2
    python experiments/bias_init_table.py --workdir=/tmp/bias_init \\
        > experiments/siglip_bias_init_table.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep import summary  # noqa: E402
from multimodal_ssl.sweep.aggregate import Stat, clear_sign  # noqa: E402
from multimodal_ssl.sweep.curves import curve  # noqa: E402
from multimodal_ssl.sweep.plan import plan  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "studies", "siglip_bias_init.py")
LOG10 = math.log(10.0)
# (name, setting a, setting b): a - b; settings as (b_init, t_init).
CONTRASTS = (
    ("b -10 vs 0 (t log 10)", (-10.0, LOG10), (0.0, LOG10)),
    ("b -10 vs -5 (t log 10)", (-10.0, LOG10), (-5.0, LOG10)),
    ("b -5 vs 0 (t log 10)", (-5.0, LOG10), (0.0, LOG10)),
    ("t log 10 vs log 1 (b -10)", (-10.0, LOG10), (-10.0, 0.0)),
)
METRICS = {"eval/zeroshot/zeroshot_top1": "zero-shot top-1",
           "eval/retrieval/img2txt_r@1": "img→txt R@1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="The sweep's --workdir.")
    args = parser.parse_args()
    runs = plan(RECIPE, args.workdir)
    dirs = {}
    for run in runs:
        if summary.collect(run).status == "finished":
            o = run.overrides
            dirs[o["config.loss.b_init"], o["config.loss.t_init"], o["config.seed"]] = run.workdir
    for metric, title in METRICS.items():
        steps = sorted(curve(next(iter(dirs.values())), metric)) if dirs else []
        print(f"**{title}** ({metric}): a − b, paired by seed; **bold**: clear\n")
        print("| a vs b | seeds | " + " | ".join(f"step {s}" for s in steps) + " |")
        print("|---|---|" + "---|" * len(steps))
        for name, a, b in CONTRASTS:
            seeds = sorted(s for (*ab, s) in dirs if tuple(ab) == a and (*b, s) in dirs)
            if not seeds:
                continue
            cells = []
            for step in steps:
                diff = Stat.of(curve(dirs[(*a, s)], metric)[step]
                               - curve(dirs[(*b, s)], metric)[step] for s in seeds)
                text = f"{diff.mean:+.3f} ± {0.0 if diff.n < 2 else diff.std:.3f}"
                cells.append(f"**{text}**" if clear_sign(diff) else text)
            print(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
