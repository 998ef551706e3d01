"""The digits study's table and curves from the sweep's runs
(configs/studies/siglip_digits.py):

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_digits.py \\
        --workdir=/tmp/siglip_digits --parallel=2
    python experiments/digits_curves.py --workdir=/tmp/siglip_digits

Per setting (optimizer, learning rate, augmentation; the finished runs' seeds pooled):

- ``<out>/siglip_digits_table.md``: for zero-shot top-1 and image->text R@1 the final
  value, the best value over the eval steps (per seed, then mean ± std over seeds) and
  the step at which the seed-mean curve peaks, then the final text->image R@1 and k-NN
  (k = 20) top-1 and the mean wall seconds per run. A best well above the final value
  at an early step is late overfitting;
- ``<out>/siglip_digits_curves.png``: zero-shot top-1, image->text R@1 and k-NN top-1
  against the step, one line per setting: the mean over seeds with a shaded min-max band.

Rows and curves come from the sweep's own helpers (``summary.collect``,
``seeds.seed_groups`` / ``cell``, ``sweep.curves``). ``--config`` takes the recipe's
``:tiny`` variant for the smoke sweep; ``--out`` defaults to ``experiments/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep import curves, seeds, summary  # noqa: E402
from multimodal_ssl.sweep.plan import Run, plan  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "studies", "siglip_digits.py")
ZEROSHOT = "eval/zeroshot/zeroshot_top1"
IMG2TXT = "eval/retrieval/img2txt_r@1"
TXT2IMG = "eval/retrieval/txt2img_r@1"
KNN = "eval/knn/knn@20_top1"
CURVES = {ZEROSHOT: "zero-shot top-1", IMG2TXT: "img→txt R@1 (class-level)", KNN: "k-NN@20 top-1"}
DEFAULT = ("muon", 2e-3, "resize_small|center_crop|value_range(-1, 1)")


def label(overrides: dict) -> str:
    """A setting's name, e.g. ``Muon lr 0.002 (default)``, ``... + random_resized_crop(0.7)``."""
    name = overrides.get("config.optim.name", DEFAULT[0])
    lr = overrides.get("config.optim.lr", DEFAULT[1])
    pp = overrides.get("config.data.pp_train", DEFAULT[2])
    text = f"{'Muon' if name == 'muon' else 'AdamW'} lr {lr:g}"
    if pp != DEFAULT[2]:
        text += " + " + pp.split("|")[0]
    if (name, lr, pp) == DEFAULT:
        text += " (default)"
    return text


def table(groups: dict[str, list[tuple[Run, summary.Row]]]) -> list[str]:
    """The Markdown lines of the table (module docstring)."""
    header = ["setting", "seeds"]
    for title in ("zero-shot top-1", "img→txt R@1"):
        header += [f"{title} final", f"{title} best", "best at step"]
    header += ["txt→img R@1 final", "k-NN@20 final", "wall s / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in groups.items():
        cells = [name, str(len(group))]
        for metric in (ZEROSHOT, IMG2TXT):
            cells.append(seeds.cell([row.final.get(metric) for _, row in group]) or "-")
            cells.append(seeds.cell([row.best.get(metric) for _, row in group]) or "-")
            step = curves.best_step([curves.curve(run.workdir, metric) for run, _ in group],
                                    metric)
            cells.append("-" if step is None else str(step))
        for metric in (TXT2IMG, KNN):
            cells.append(seeds.cell([row.final.get(metric) for _, row in group]) or "-")
        cells.append(seeds.cell([row.wall_s for _, row in group], 0) or "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="The sweep's --workdir.")
    parser.add_argument("--config", default=RECIPE, help="The sweep's --config (FILE[:ARG]).")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments"))
    args = parser.parse_args(argv)
    runs = plan(args.config, args.workdir)
    rows = [summary.collect(r) for r in runs]
    by_name = {r.name: r for r in runs}
    groups: dict[str, list[tuple[Run, summary.Row]]] = {}
    for group in seeds.seed_groups(rows).values():
        if group:
            groups[label(group[0].overrides)] = [(by_name[r.name], r) for r in group]
    finished = sum(len(g) for g in groups.values())
    print(f"{finished} of {len(runs)} runs finished, {len(groups)} settings")
    if not groups:
        sys.exit("error: no finished runs")
    os.makedirs(args.out, exist_ok=True)
    lines = table(groups)
    table_path = os.path.join(args.out, "siglip_digits_table.md")
    with open(table_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {table_path}")
    plot_path = os.path.join(args.out, "siglip_digits_curves.png")
    curves.plot({name: [run for run, _ in group] for name, group in groups.items()},
                list(CURVES), plot_path, titles=CURVES)
    print(f"wrote {plot_path}")


if __name__ == "__main__":
    main()
