"""``--plot=X_KEY:METRIC``: the final value of ``METRIC`` against the swept ``X_KEY``.

One line per combination of the other keys that vary (``config.seed`` and keys that
follow ``X_KEY``, such as the ``total_steps`` zipped with ``batch_size``, aside); runs that
differ only in the seed are averaged, with min-max error bars. Numeric x values are
placed on their axis (logarithmic when all are positive and span a factor >= 8), others
in their sweep order. Needs matplotlib (pinned in the ``[dev]`` extra).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from multimodal_ssl.sweep.plan import PREFIX, format_value
from multimodal_ssl.sweep.seeds import SEED
from multimodal_ssl.sweep.summary import Row


def varying_keys(overrides: Sequence[dict]) -> list[str]:
    """The keys whose value differs between the runs' ``overrides``, in sweep order."""
    keys = dict.fromkeys(k for o in overrides for k in o)
    return [k for k in keys if len({repr(o.get(k)) for o in overrides}) > 1]


def parse_spec(spec: str, overrides: Sequence[dict]) -> tuple[str, str]:
    """``"X_KEY:METRIC"`` -> (the swept ``config.`` key that is or ends with ``X_KEY``,
    ``METRIC``); ValueError naming the swept keys. Checked before any run starts."""
    x_key, sep, metric = spec.partition(":")
    if not sep or not metric:
        raise ValueError(f"--plot={spec}: expected X_KEY:METRIC, e.g. batch_size:eval/...")
    swept = varying_keys(overrides)
    found = [k for k in swept if k in (x_key, PREFIX + x_key) or k.endswith("." + x_key)]
    if len(found) != 1:
        raise ValueError(f"--plot={spec}: {x_key!r} names no single swept key; swept: {swept}")
    return found[0], metric


def follows(rows: Sequence[Row], key: str, x_key: str) -> bool:
    """Whether ``key``'s value is a function of ``x_key``'s (e.g. swept in one ``zipit``:
    ``total_steps`` with ``batch_size``): such keys name no line of their own."""
    seen: dict[str, str] = {}
    for r in rows:
        x, value = repr(r.overrides.get(x_key)), repr(r.overrides.get(key))
        if seen.setdefault(x, value) != value:
            return False
    return True


def short_value(row: Row, key: str) -> str:
    """A swept value as a legend shows it: its label, a float to 4 significant digits."""
    if key in row.labels:
        return row.labels[key]
    value = row.overrides.get(key)
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)


def curves(rows: Sequence[Row], x_key: str, metric: str) -> dict[str, list[tuple]]:
    """``{line label: [(x, mean, min, max), ...]}`` of the final ``metric`` against
    ``x_key``: one line per combination of the other varying keys but the seed, runs
    differing only in the seed pooled; points in sweep order of x (sorted if numeric).
    ValueError when no run has ``metric``."""
    metrics = sorted({m for r in rows for m in r.final})
    if metric not in metrics:
        raise ValueError(f"--plot: no run has metric {metric!r} (yet); metrics: {metrics}")
    others = [k for k in varying_keys([r.overrides for r in rows])
              if k not in (x_key, SEED) and not follows(rows, k, x_key)]
    pooled: dict[str, dict] = {}
    for r in rows:
        if metric in r.final and x_key in r.overrides:
            label = ", ".join(f"{k[len(PREFIX):]}={short_value(r, k)}" for k in others)
            pooled.setdefault(label, {}).setdefault(r.overrides[x_key], []).append(
                r.final[metric]
            )
    out = {}
    for label, points in pooled.items():
        xs = list(points)
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):
            xs.sort()
        out[label] = [(x, sum(points[x]) / len(points[x]), min(points[x]), max(points[x]))
                      for x in xs]
    return out


def plot(rows: Sequence[Row], x_key: str, metric: str, workdir: str) -> str:
    """Draws :func:`curves` into ``<workdir>/plot_<metric>_vs_<key>.png``; -> its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = curves(rows, x_key, metric)
    xs = list(dict.fromkeys(p[0] for points in lines.values() for p in points))
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    position = {x: x if numeric else i for i, x in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in lines.items():
        ax.errorbar(
            [position[x] for x, *_ in points],
            [mean for _, mean, _, _ in points],
            yerr=[[m - lo for _, m, lo, _ in points], [hi - m for _, m, _, hi in points]],
            marker="o", capsize=3, label=label or metric,
        )
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2 if all(isinstance(x, int) for x in xs) else 10)
    ticks = sorted(xs) if numeric else xs
    ax.set_xticks([position[x] for x in ticks], [str(x) for x in ticks])
    pooled = len({repr(r.overrides.get(SEED)) for r in rows}) > 1
    ax.set_xlabel(x_key[len(PREFIX) :])
    ax.set_ylabel(metric + ("\n(mean over seeds, min-max)" if pooled else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", f"plot_{metric}_vs_{x_key[len(PREFIX):]}")
    path = os.path.join(workdir, safe + ".png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
