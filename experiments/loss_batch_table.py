"""The sigmoid-vs-softmax study's table (configs/studies/siglip_loss_batch.py): per global
batch, each loss's final metric (mean ± std over seeds) and the difference sigmoid -
softmax paired by seed (the two runs of a seed start from the same initial towers and
see the same batches), with whether it is clear (``aggregate.clear_sign`` on the paired
differences: |mean| > 0.01 and > 3 std).

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_loss_batch.py \\
        --workdir=/tmp/loss_batch --parallel=2
    python experiments/loss_batch_table.py --workdir=/tmp/loss_batch \\
        > experiments/siglip_loss_batch_table.md

Reads the runs' own files through the sweep's helpers (``plan``, ``summary.collect``);
runs that did not finish are left out (the ``seeds`` column counts the pairs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep import summary  # noqa: E402
from multimodal_ssl.sweep.aggregate import Stat, clear_sign  # noqa: E402
from multimodal_ssl.sweep.plan import plan  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "studies", "siglip_loss_batch.py")
METRICS = {
    "eval/zeroshot/zeroshot_top1": "zero-shot top-1",
    "eval/retrieval/img2txt_r@1": "img→txt R@1",
    "eval/retrieval/txt2img_r@1": "txt→img R@1",
}
MIN_DIFF = 0.01  # a paired difference smaller than this is called equal whatever its spread


def finals(rows: Sequence[summary.Row]) -> dict[tuple[int, str, int], dict[str, float]]:
    """``{(batch, loss, seed): final eval metrics}`` of the finished runs."""
    return {
        (r.overrides["config.batch_size"], r.overrides["config.loss.name"],
         r.overrides["config.seed"]): r.final
        for r in rows if r.status == "finished"
    }


def table(results: dict[tuple[int, str, int], dict[str, float]],
          steps: dict[int, int]) -> list[str]:
    """Markdown lines: one row per batch (``steps``: its training steps), per metric
    sigmoid, softmax and their paired difference."""
    header = ["batch", "steps", "seeds"]
    for title in METRICS.values():
        header += [f"{title} sigmoid", "softmax", "sigmoid − softmax"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for batch in sorted({b for b, _, _ in results}):
        pairs = sorted(s for b, loss, s in results
                       if b == batch and loss == "sigmoid" and (b, "softmax", s) in results)
        if not pairs:
            continue
        cells = [str(batch), str(steps[batch]), str(len(pairs))]
        for metric in METRICS:
            sig = [results[batch, "sigmoid", s][metric] for s in pairs]
            soft = [results[batch, "softmax", s][metric] for s in pairs]
            diff = Stat.of(a - b for a, b in zip(sig, soft, strict=True))
            verdict = {1: " **sigmoid**", -1: " **softmax**", 0: ""}[
                clear_sign(diff, min_abs=MIN_DIFF)]
            cells += [Stat.of(sig).cell(), Stat.of(soft).cell(),
                      f"{diff.mean:+.3f} ± {0.0 if diff.n < 2 else diff.std:.3f}{verdict}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="The sweep's --workdir.")
    parser.add_argument("--config", default=RECIPE, help="The sweep's --config.")
    args = parser.parse_args(argv)
    rows = [summary.collect(r) for r in plan(args.config, args.workdir)]
    results = finals(rows)
    if not results:
        sys.exit("error: no finished runs")
    steps = {r.overrides["config.batch_size"]: r.overrides["config.total_steps"] for r in rows}
    print("\n".join(table(results, steps)))
    print(f"\n{len(results)} of {len(rows)} runs finished.", file=sys.stderr)


if __name__ == "__main__":
    main()
