"""The SigLIP 2 ablation's table and plot from the sweep's runs (configs/studies/
siglip2_ablation.py): per arm (base, + decoder, + self-distillation, all) the mean ± std
over seeds of zero-shot, retrieval, the dense probe, the decoder's evals and the time
per step.

    python -m multimodal_ssl.sweep --config=configs/studies/siglip2_ablation.py \\
        --workdir=/tmp/siglip2_ablation --parallel=2
    python experiments/siglip2_ablation.py --workdir=/tmp/siglip2_ablation

writes ``experiments/siglip2_ablation_table.md`` (the table, pasted into
``siglip2_ablation.md`` with the reading) and ``experiments/siglip2_ablation.png``.
``--flops`` adds each arm's training FLOPs per step (XLA's ``cost_analysis`` of the
lowered step on one device, the self-distillation terms counted as on): a measure of the
cost that does not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from multimodal_ssl.sweep import runner, seeds, summary  # noqa: E402
from multimodal_ssl.sweep.plan import plan  # noqa: E402

RECIPE = os.path.join(ROOT, "configs", "studies", "siglip2_ablation.py")
ARM_NAMES = {
    (0.0, 0.0, 0.0): "base SigLIP",
    (1.0, 0.0, 0.0): "+ decoder (LocCa)",
    (0.0, 1.0, 0.25): "+ self-distillation & masked prediction",
    (1.0, 1.0, 0.25): "all (SigLIP 2)",
}
COLUMNS = {  # metric -> column title
    "eval/zeroshot/zeroshot_top1": "zero-shot top-1",
    "eval/retrieval/img2txt_r@1": "img→txt R@1",
    "eval/retrieval/txt2img_r@1": "txt→img R@1",
    "eval/dense_probe/miou": "dense probe mIoU",
    "eval/dense_probe/pixel_acc": "dense pixel acc",
    "eval/locca/referring_acc": "referring acc (IoU≥0.5)",
    "eval/locca/caption_exact": "caption exact",
    "eval/locca/caption_token_acc": "caption token acc",
    "eval/locca/grounded_exact": "grounded exact",
}


def arm(row: summary.Row) -> str:
    o = row.overrides
    key = (o["config.decoder.weight"], o["config.distill.local_weight"],
           o["config.distill.masked_weight"])
    return ARM_NAMES[key]


def step_ms(run_dir: str) -> float | None:
    """Median over the run's logged windows of the median step time (ms)."""
    values = [m["train/step_time_ms_p50"] for m in runner.read_metrics(run_dir).values()
              if "train/step_time_ms_p50" in m]
    return statistics.median(values) if values else None


PAIRED = ("eval/zeroshot/zeroshot_top1", "eval/retrieval/img2txt_r@1",
          "eval/retrieval/txt2img_r@1", "eval/dense_probe/miou")


def paired_table(groups) -> str:
    """Each arm minus the base run of the same seed (same init and data order until the
    arms diverge), mean ± std over seeds: far less noisy than comparing the arms' means."""
    base = {r.overrides["config.seed"]: r for _, r in groups.get(ARM_NAMES[(0.0, 0.0, 0.0)], [])}
    header = ["arm - base (same seed)", *(COLUMNS[m] for m in PAIRED)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in list(ARM_NAMES.values())[1:]:
        cells = [name]
        for m in PAIRED:
            diffs = [r.final[m] - base[r.overrides["config.seed"]].final[m]
                     for _, r in groups.get(name, [])
                     if r.overrides["config.seed"] in base and m in r.final
                     and m in base[r.overrides["config.seed"]].final]
            cells.append(seeds.cell(diffs) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_flops(arm_key: tuple[float, float, float]) -> float:
    """FLOPs of one train step of the study's config in arm ``arm_key`` (lowered, not
    compiled; one device; the first batch of the real pipeline)."""
    import jax

    from multimodal_ssl.builder import Experiment
    from multimodal_ssl.recipes import load_recipe
    from multimodal_ssl.sharding import to_global

    config = load_recipe(RECIPE)
    config.evals = {}
    config.decoder.weight, config.distill.local_weight, config.distill.masked_weight = arm_key
    exp = Experiment(config, jax.devices()[:1])
    batches = iter(exp.train_loader())
    batch = {k: v for k, v in next(batches).items() if k in exp.batch_keys}
    batches.close()
    state = exp.init_state()
    lowered = exp.train_step(state).lower(state, to_global(batch, exp.mesh))
    return float(lowered.cost_analysis()["flops"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments"))
    parser.add_argument("--flops", action="store_true", help="add FLOPs per step per arm")
    args = parser.parse_args()
    runs = plan(RECIPE, args.workdir)
    rows = [summary.collect(r) for r in runs]
    groups: dict[str, list] = {}
    for run, row in zip(runs, rows, strict=True):
        # Trained to the end. (A decoder-less arm written before the locca eval reported
        # its skip has every metric but that one, which the sweep waits for.)
        if row.steps == run.total_steps:
            groups.setdefault(arm(row), []).append((run, row))
    header = ["arm", "seeds", *COLUMNS.values(), "ms / step (median)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ARM_NAMES.values():
        group = groups.get(name, [])
        cells = [name, str(len(group))]
        cells += [seeds.cell([r.final.get(m) for _, r in group]) or "-" for m in COLUMNS]
        cells.append(seeds.cell([step_ms(run.workdir) for run, _ in group], 0))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", paired_table(groups)]
    if args.flops:
        base = None
        lines += ["", "| arm | training GFLOPs / step (terms on) | x base |", "|---|---|---|"]
        for key, name in ARM_NAMES.items():
            flops = step_flops(key)
            base = base or flops
            lines.append(f"| {name} | {flops / 1e9:.1f} | {flops / base:.2f} |")
    table = os.path.join(args.out, "siglip2_ablation_table.md")
    with open(table, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(groups, os.path.join(args.out, "siglip2_ablation.png"))


def _plot(groups, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COLUMNS if any(m in r.final for g in groups.values() for _, r in g)]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(ARM_NAMES), 1)
    for i, name in enumerate(ARM_NAMES.values()):
        stats = [seeds.mean_std([r.final.get(m) for _, r in groups.get(name, [])])
                 for m in metrics]
        xs = [j + (i - 1.5) * width for j in range(len(metrics))]
        ax.bar(xs, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2,
               label=name)
    ax.set_xticks(range(len(metrics)), [COLUMNS[m] for m in metrics], rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over seeds (± std)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
