"""Final retrieval and zero-shot of the DCL, Symile and GRAM recipes on ``generated:shapes``.

Reads the last eval of each run's ``metrics.jsonl`` (trained with the CLI, 400 steps of
batch 128, 1 CPU device) and writes a markdown table. The recipes' evals score pairs by
cosine similarity; Symile scores a triple by its multilinear inner product, so with
``--symile_embeddings`` (the ``embed`` CLI's output for image, text and audio of the
Symile run) it adds retrieval of each modality given the other two (MIP), next to the
pairwise cosine retrieval of the same embeddings:

    for r in symile gram dcl; do
      python -m multimodal_ssl.main --config=configs/$r.py --workdir=/tmp/lit_$r
    done
    python -m multimodal_ssl.embed --config=configs/symile.py --checkpoint=/tmp/lit_symile \\
      --data=generated:shapes:test --output=/tmp/lit_emb --modalities=image,text,audio
    python experiments/literature_table.py --workdirs=/tmp/lit_symile,/tmp/lit_gram,/tmp/lit_dcl \\
      --symile_embeddings=/tmp/lit_emb
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from multimodal_ssl.metrics import final_metrics
from multimodal_ssl.sweep.aggregate import retrieval_keys

PAIRS = [("image", "text"), ("audio", "text"), ("image", "audio"), ("depth", "text")]
ZEROSHOT = ("image", "audio", "depth")
MODS3 = ("image", "text", "audio")
COMMANDS = [
    "for r in symile gram dcl; do",
    "  python -m multimodal_ssl.main --config=configs/$r.py --workdir=/tmp/lit_$r",
    "done",
    "python -m multimodal_ssl.embed --config=configs/symile.py --checkpoint=/tmp/lit_symile \\",
    "  --data=generated:shapes:test --output=/tmp/lit_emb --modalities=image,text,audio",
    "python experiments/literature_table.py \\",
    "  --workdirs=/tmp/lit_symile,/tmp/lit_gram,/tmp/lit_dcl --symile_embeddings=/tmp/lit_emb",
]


def _pair_cell(metrics: dict[str, float], a: str, b: str) -> str:
    """``a -> b / b -> a`` retrieval R@1 of eval ``retrieval_<a>_<b>``, or "-"."""
    keys = retrieval_keys(a, b)
    if not all(k in metrics for k in keys):
        return "-"
    return " / ".join(f"{metrics[k]:.3f}" for k in keys)


def _zeroshot_cell(metrics: dict[str, float], modality: str) -> str:
    key = f"eval/zeroshot_{modality}/zeroshot_top1"
    return f"{metrics[key]:.3f}" if key in metrics else "-"


def mip_retrieval(directory: str) -> list[list[str]]:
    """R@1 of each of image, text, audio as the candidate: by the MIP with the other two
    modalities of the query row, and by cosine with each one alone. A retrieved row is
    correct when it shows the query's caption (identical text embeddings)."""
    emb = {m: np.load(f"{directory}/{m}_embeddings.npy").astype(np.float64) for m in MODS3}
    text = emb["text"]
    same = np.abs(text[:, None, :] - text[None, :, :]).max(-1) < 1e-6

    def r1(scores: np.ndarray) -> str:
        return f"{same[np.arange(len(scores)), scores.argmax(1)].mean():.3f}"

    rows = []
    for target in MODS3:
        a, b = (m for m in MODS3 if m != target)
        mip = r1((emb[a] * emb[b]) @ emb[target].T)
        rows.append(
            [target, f"{a} × {b}", mip, r1(emb[a] @ emb[target].T), r1(emb[b] @ emb[target].T)]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", required=True, help="comma-separated run directories")
    parser.add_argument("--symile_embeddings", help="embed CLI output of the Symile run")
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
    if args.symile_embeddings:
        n = len(np.load(f"{args.symile_embeddings}/ids.npy"))
        lines += [
            "",
            f"Symile run, R@1 over the {n} held-out scenes (correct: same caption), "
            "by the multilinear inner product with both other modalities vs cosine with one:",
            "",
            "| candidates | query | MIP R@1 | cosine R@1 (first) | cosine R@1 (second) |",
            "|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in mip_retrieval(args.symile_embeddings)]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
