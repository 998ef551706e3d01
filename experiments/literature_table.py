"""Final retrieval and zero-shot of the DCL, Symile and GRAM recipes on ``generated:shapes``.

Reads the last eval of each run's ``metrics.jsonl`` (trained with the CLI, 400 steps of
batch 128, 1 CPU device) and writes a markdown table:

    for r in symile gram dcl; do
      python -m multimodal_ssl.main --config=configs/$r.py --workdir=/tmp/lit_$r
    done
    python experiments/literature_table.py --workdirs=/tmp/lit_symile,/tmp/lit_gram,/tmp/lit_dcl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PAIRS = [("image", "text"), ("audio", "text"), ("image", "audio"), ("depth", "text")]
ZEROSHOT = ("image", "audio", "depth")
ABBREV = {"image": "img", "text": "txt"}
COMMANDS = [
    "for r in symile gram dcl; do",
    "  python -m multimodal_ssl.main --config=configs/$r.py --workdir=/tmp/lit_$r",
    "done",
    "python experiments/literature_table.py --workdirs=/tmp/lit_symile,/tmp/lit_gram,/tmp/lit_dcl",
]


def final_metrics(workdir: str) -> dict[str, float]:
    """The last logged value of every metric of the run in ``workdir``."""
    out: dict[str, float] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            out.update({k: v for k, v in json.loads(line).items() if k != "step"})
    return out


def _pair_cell(metrics: dict[str, float], a: str, b: str) -> str:
    """``a -> b / b -> a`` retrieval R@1 of eval ``retrieval_<a>_<b>``, or "-"."""
    qa, qb = ABBREV.get(a, a), ABBREV.get(b, b)
    keys = [f"eval/retrieval_{a}_{b}/{x}2{y}_r@1" for x, y in ((qa, qb), (qb, qa))]
    if not all(k in metrics for k in keys):
        return "-"
    return " / ".join(f"{metrics[k]:.3f}" for k in keys)


def _zeroshot_cell(metrics: dict[str, float], modality: str) -> str:
    key = f"eval/zeroshot_{modality}/zeroshot_top1"
    return f"{metrics[key]:.3f}" if key in metrics else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", required=True, help="comma-separated run directories")
    parser.add_argument("--output", default=str(Path(__file__).with_name("literature.md")))
    args = parser.parse_args()
    header = ["run", "final train loss", *[f"R@1 {a}→{b} / ←" for a, b in PAIRS]]
    header += [f"zero-shot top-1 from {m}" for m in ZEROSHOT]
    rows = []
    for workdir in args.workdirs.split(","):
        m = final_metrics(workdir)
        cells = [os.path.basename(workdir.rstrip("/")), f"{m['train/loss']:.3f}"]
        cells += [_pair_cell(m, a, b) for a, b in PAIRS]
        cells += [_zeroshot_cell(m, z) for z in ZEROSHOT]
        rows.append(cells)
    lines = [
        "# DCL, Symile and GRAM on generated:shapes",
        "",
        "Reproduce (the recipes' defaults: 400 steps of batch 128, 1 CPU device):",
        "",
        "```",
        *COMMANDS,
        "```",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
