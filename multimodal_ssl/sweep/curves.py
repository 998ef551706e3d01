"""``--curves=METRIC``: ``METRIC`` against the training step, from the runs' own
``metrics.jsonl``: the curves behind claims such as "matters early in training" or
"overfits late", which the final values in ``summary.md`` cannot show.

One line per setting (a combination of the swept keys other than ``config.seed``; runs
that differ only in the seed pooled: the mean over seeds, with a shaded min-max band),
over the steps every pooled run logged. Only finished runs are drawn, as in
``summary_seeds.md``. The sweep writes, for all ``--curves`` metrics together:

- ``<workdir>/curves.png``: one panel per metric (a logarithmic axis for a loss or rank
  whose curves span more than a factor 10);
- ``<workdir>/curves.md``: per metric, one row per setting with ``mean ± std`` (sample
  std over the seeds) at up to ``MAX_COLUMNS`` of the logged steps (every k-th, ending
  at the last; the figure has them all), and the step at which the seed-mean
  curve peaks (metrics where higher is better) or bottoms (ranks and losses), the
  earliest on a tie.

Needs matplotlib for the figure (pinned in the ``[dev]`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from multimodal_ssl.sweep.aggregate import Stat
from multimodal_ssl.sweep.plan import PREFIX, Run
from multimodal_ssl.sweep.plot import short_value, varying_keys
from multimodal_ssl.sweep.runner import read_metrics
from multimodal_ssl.sweep.seeds import SEED, seed_groups
from multimodal_ssl.sweep.summary import Row, direction

MAX_COLUMNS = 10
Curve = dict[int, float]  # {step: value}


def curve(run_dir: str, metric: str) -> Curve:
    """``{step: value}`` of ``metric`` in the run's ``metrics.jsonl``, by step."""
    return {s: m[metric] for s, m in sorted(read_metrics(run_dir).items()) if metric in m}


def pooled(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """(the steps every curve has ``[n_steps]``, the values there ``[n_curves, n_steps]``)."""
    if not curves:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return np.asarray(steps, np.int64), np.asarray([[c[s] for s in steps] for c in curves])


def better(metric: str) -> int:
    """+1 when higher ``metric`` is better, -1 when lower is (ranks, losses), 0 else."""
    return direction(metric) or (-1 if metric.rsplit("/", 1)[-1].endswith("loss") else 0)


def best_step(curves: Sequence[Curve], metric: str) -> int | None:
    """The step where the mean over ``curves`` is best (:func:`better`; the earliest on a
    tie); None when nothing is pooled or ``metric`` has no better direction."""
    steps, values = pooled(curves)
    sign = better(metric)
    if not len(steps) or not sign:
        return None
    return int(steps[int(np.argmax(sign * values.mean(axis=0)))])


def settings(runs: Sequence[Run], rows: Sequence[Row]) -> dict[str, list[Run]]:
    """``{setting label: its finished runs}`` (``seeds.seed_groups``) in sweep order; the
    label names the varying keys but the seed (``loss.name=sigmoid, loss.t_init=2.303``),
    a labelled value by its label, a float to 4 significant digits; ``""`` when only the
    seed varies."""
    keys = [k for k in varying_keys([r.overrides for r in rows]) if k != SEED]
    by_name = {run.name: run for run in runs}
    return {
        ", ".join(f"{k[len(PREFIX):]}={short_value(group[0], k)}" for k in keys):
            [by_name[row.name] for row in group]
        for group in seed_groups(rows).values() if group
    }


def table(groups: dict[str, list[Run]], metric: str, digits: int = 3) -> list[str]:
    """Markdown lines: one row per setting, ``mean ± std`` of ``metric`` at up to
    ``MAX_COLUMNS`` of the steps any setting logged (empty where a setting's runs did not
    all log it), and the best step over all of them."""
    by_setting = {label: [curve(r.workdir, metric) for r in group]
                  for label, group in groups.items()}
    steps = sorted({s for cs in by_setting.values() for s in pooled(cs)[0].tolist()})
    stride = -(-len(steps) // MAX_COLUMNS)  # every stride-th step, ending at the last
    steps = steps[::-1][::stride][::-1]
    header = ["setting", "seeds", *(f"step {s}" for s in steps), "best at step"]
    lines = [f"**{metric}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cs in by_setting.items():
        own, values = pooled(cs)
        column = {int(s): values[:, i] for i, s in enumerate(own)}
        cells = [label or "(all)", str(len(cs))]
        for s in steps:
            cells.append(Stat.of(column[s].tolist()).cell(digits) if s in column else "")
        step = best_step(cs, metric)
        cells.append("-" if step is None else str(step))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def plot(groups: dict[str, list[Run]], metrics: Sequence[str], path: str,
         titles: dict[str, str] | None = None) -> str:
    """Draws one panel per metric (title ``titles[metric]``, default the metric) into
    ``path``; -> ``path``. ValueError when no run logged one of ``metrics``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        drawn, low, high = 0, np.inf, -np.inf
        for label, group in groups.items():
            steps, values = pooled([curve(r.workdir, metric) for r in group])
            if not len(steps):
                continue
            low, high = min(low, values.min()), max(high, values.max())
            (line,) = ax.plot(steps, values.mean(axis=0), marker=".", label=label or metric)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0),
                            color=line.get_color(), alpha=0.15, linewidth=0)
            drawn += 1
        if not drawn:
            plt.close(fig)
            raise ValueError(f"--curves: no finished run logged metric {metric!r}")
        if better(metric) < 0 and low > 0 and high / low > 10:  # losses spanning decades
            ax.set_yscale("log")
        ax.set_title((titles or {}).get(metric, metric), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    pooled_seeds = any(len(g) > 1 for g in groups.values())
    axes[0][0].set_ylabel("mean over seeds (band: min-max)" if pooled_seeds else "value")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(runs: Sequence[Run], rows: Sequence[Row], metrics: Sequence[str],
          workdir: str) -> tuple[str, str]:
    """``curves.png`` and ``curves.md`` in ``workdir`` (module docstring); -> their paths."""
    groups = settings(runs, rows)
    png = plot(groups, metrics, os.path.join(workdir, "curves.png"))
    lines: list[str] = []
    for metric in metrics:
        lines += [*table(groups, metric), ""]
    md = os.path.join(workdir, "curves.md")
    with open(md, "w") as f:
        f.write("\n".join(lines))
    return png, md
