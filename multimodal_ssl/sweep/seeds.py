"""``<workdir>/summary_seeds.md``: the runs that differ only in ``config.seed`` pooled, one
row per setting of the other swept keys, every final ``eval/*`` metric as
``mean ± std (n)`` (sample standard deviation over the ``n`` finished seeds; ``n = 1``
shows the value alone), plus the mean wall seconds per run. Written by the sweep next to
``summary.md`` when the seed is swept; the studies' write-ups quote it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from multimodal_ssl.sweep.aggregate import Stat
from multimodal_ssl.sweep.plan import PREFIX, format_value
from multimodal_ssl.sweep.summary import Row

SEED = "config.seed"


def seed_groups(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    """``{(value of each non-seed swept key, ...): finished rows}`` in sweep order."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r.overrides) if k != SEED]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        key = tuple(format_value(r.overrides.get(k)) for k in keys)
        groups.setdefault(key, [])
        if r.status == "finished":
            groups[key].append(r)
    return groups


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n) of the finite ``values`` (None skipped)."""
    finite = [x for x in values if x is not None and math.isfinite(x)]
    if not finite:
        return math.nan, math.nan, 0
    stat = Stat.of(finite)
    return stat.mean, 0.0 if stat.n == 1 else stat.std, stat.n


def cell(values: Sequence[float | None], digits: int = 3) -> str:
    """``"0.912 ± 0.004 (3)"``; the value alone for one seed; empty for none."""
    finite = [x for x in values if x is not None and math.isfinite(x)]
    if not finite:
        return ""
    stat = Stat.of(finite)
    return stat.cell(digits) + ("" if stat.n == 1 else f" ({stat.n})")


def write(rows: Sequence[Row], workdir: str, metrics: Sequence[str] | None = None) -> str:
    """Writes ``summary_seeds.md`` (``metrics``: default every final ``eval/*``); -> path."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r.overrides) if k != SEED]
    metrics = list(metrics or sorted({m for r in rows for m in r.final}))
    header = [*(k[len(PREFIX):] for k in keys), "seeds", "wall s", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting, group in seed_groups(rows).items():
        wall = [r.wall_s for r in group]
        cells = [*setting, str(len(group)), cell(wall, 0),
                 *(cell([r.final.get(m) for r in group]) for m in metrics)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    path = os.path.join(workdir, "summary_seeds.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
