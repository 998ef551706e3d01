"""Result tables from finished runs: the metric names of the shapes evals, runs that differ
only in their seed pooled into mean ± sample standard deviation, and the test of whether
one row beats another by a clear margin.

Pure functions (no JAX): the experiment scripts (``experiments/literature_table.py``,
``experiments/multimodal_objectives.py``) and their tests use them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

# How a modality appears in metric names (evals.common.metric_name, without importing JAX).
_METRIC_NAMES = {"image": "img", "text": "txt"}


def metric_name(modality: str) -> str:
    """``img`` / ``txt`` for image / text, else the modality (as the evaluators write it)."""
    return _METRIC_NAMES.get(modality, modality)


def retrieval_keys(a: str, b: str, eval_name: str | None = None, k: int = 1) -> tuple[str, str]:
    """The R@k metrics ``a -> b`` and ``b -> a`` of the retrieval eval ``eval_name``
    (default ``retrieval_<a>_<b>``, as configs/imagebind.py names them)."""
    name = eval_name or f"retrieval_{a}_{b}"
    qa, qb = metric_name(a), metric_name(b)
    return f"eval/{name}/{qa}2{qb}_r@{k}", f"eval/{name}/{qb}2{qa}_r@{k}"


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1; NaN for one value) of ``n`` values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        values = [float(v) for v in values]
        if not values:
            raise ValueError("Stat.of: no values")
        n = len(values)
        mean = sum(values) / n
        if n < 2:
            return cls(mean, math.nan, n)
        return cls(mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n)

    def cell(self, digits: int = 3) -> str:
        """``"0.512 ± 0.031"`` (the mean alone for a single value)."""
        if math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def pool(
    runs: Iterable[tuple[str, Mapping[str, float]]], metrics: Sequence[str] | None = None
) -> dict[str, dict[str, Stat]]:
    """``[(group, {metric: value}), ...]`` (one entry per run; the runs of a group differ
    only in their seed) -> ``{group: {metric: Stat}}`` over the runs of each group that
    have the metric; ``metrics``: the metrics to pool (default: every one)."""
    values: dict[str, dict[str, list[float]]] = {}
    for group, run in runs:
        slot = values.setdefault(group, {})
        for key in metrics if metrics is not None else run:
            if key in run:
                slot.setdefault(key, []).append(float(run[key]))
    return {g: {k: Stat.of(v) for k, v in m.items()} for g, m in values.items()}


def clear_margin(
    row: Stat, baseline: Stat, *, min_abs: float = 0.05, n_std: float = 3.0
) -> bool:
    """Whether ``row`` beats ``baseline`` by a clear margin: the difference of the means
    exceeds ``min_abs`` and ``n_std`` times the combined seed spread
    ``sqrt(std_row^2 + std_baseline^2)`` (an undefined std, from one seed, counts as 0)."""
    diff = row.mean - baseline.mean
    spread = math.hypot(*(0.0 if math.isnan(s) else s for s in (row.std, baseline.std)))
    return diff > min_abs and diff > n_std * spread


def clear_sign(diff: Stat, *, min_abs: float = 0.05, n_std: float = 3.0) -> int:
    """For paired differences ``diff`` (a - b per seed): +1 when a is clearly higher, -1
    when clearly lower (:func:`clear_margin` against zero, either way), else 0."""
    zero = Stat(0.0, 0.0, diff.n)
    if clear_margin(diff, zero, min_abs=min_abs, n_std=n_std):
        return 1
    if clear_margin(Stat(-diff.mean, diff.std, diff.n), zero, min_abs=min_abs, n_std=n_std):
        return -1
    return 0
