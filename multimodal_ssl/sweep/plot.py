"""``--plot=X_KEY:METRIC``: the final value of ``METRIC`` against the swept ``X_KEY``.

One line per combination of the other keys that vary (``config.seed`` aside); runs that
differ only in the seed are averaged, with min-max error bars. Numeric x values are
placed on their axis (logarithmic when all are positive and span a factor >= 8), others
in their sweep order. Needs matplotlib (pinned in the ``[dev]`` extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from multimodal_ssl.sweep.plan import PREFIX
from multimodal_ssl.sweep.summary import Row

SEED = "config.seed"


def varying_keys(rows: Sequence[Row]) -> list[str]:
    """The override keys whose value differs between ``rows``, in sweep order."""
    keys = dict.fromkeys(k for r in rows for k in r.overrides)
    return [k for k in keys if len({repr(r.overrides.get(k)) for r in rows}) > 1]


def parse_spec(spec: str, rows: Sequence[Row]) -> tuple[str, str]:
    """``"X_KEY:METRIC"`` -> (``config.``-prefixed key, metric); ValueError naming the
    valid choices."""
    x_key, sep, metric = spec.partition(":")
    if not sep:
        raise ValueError(f"--plot={spec}: expected X_KEY:METRIC, e.g. batch_size:eval/...")
    x_key = x_key if x_key.startswith(PREFIX) else PREFIX + x_key
    swept = varying_keys(rows)
    if x_key not in swept:
        raise ValueError(f"--plot={spec}: {x_key} is not a swept key; swept: {swept}")
    metrics = sorted({m for r in rows for m in r.final})
    if metric not in metrics:
        raise ValueError(f"--plot={spec}: no run has metric {metric!r}; metrics: {metrics}")
    return x_key, metric


def plot(rows: Sequence[Row], x_key: str, metric: str, workdir: str) -> str:
    """Draws ``metric`` against ``x_key`` into ``<workdir>/plot_<metric>_vs_<key>.png``;
    -> its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = varying_keys(rows)
    others = [k for k in swept if k not in (x_key, SEED)]
    lines: dict[tuple, dict] = {}
    for r in rows:
        if metric not in r.final or x_key not in r.overrides:
            continue
        label = tuple((k, r.overrides.get(k)) for k in others)
        lines.setdefault(label, {}).setdefault(r.overrides[x_key], []).append(r.final[metric])
    xs = list(dict.fromkeys(x for points in lines.values() for x in points))
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    position = {x: x if numeric else i for i, x in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        order = sorted(points, key=lambda x: position[x])
        mean = [sum(points[x]) / len(points[x]) for x in order]
        low = [m - min(points[x]) for m, x in zip(mean, order, strict=True)]
        high = [max(points[x]) - m for m, x in zip(mean, order, strict=True)]
        name = ", ".join(f"{k[len(PREFIX):]}={v}" for k, v in label) or metric
        ax.errorbar([position[x] for x in order], mean, yerr=[low, high], marker="o",
                    capsize=3, label=name)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2 if all(isinstance(x, int) for x in xs) else 10)
    if numeric:
        ax.set_xticks(sorted(xs), [str(x) for x in sorted(xs)])
    else:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    seeds = " (mean over seeds, min-max bars)" if SEED in swept else ""
    ax.set_xlabel(x_key[len(PREFIX) :])
    ax.set_ylabel(metric + seeds)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", f"plot_{metric}_vs_{x_key[len(PREFIX):]}")
    path = os.path.join(workdir, safe + ".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
