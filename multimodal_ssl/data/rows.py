"""Row operations on model inputs that are an array ``[n, ...]`` or a dict of arrays
sharing the leading dimension (a NaFlex image: ``{"patches" [n, N, f], "mask" [n, N],
"spatial_shapes" [n, 2]}``, ``data/naflex_pp.py``). The evals and the embedder slice,
pad and concatenate inputs through these, so a dict-valued modality needs nothing
special; numpy only (no jax), for the input pipeline's processes too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Rows = np.ndarray | dict[str, Any]  # an array [n, ...] or a (nested) dict of them


def as_numpy(x: Any) -> Rows:
    """Every leaf as a numpy array."""
    return {k: as_numpy(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)


def leaves(x: Rows) -> list[np.ndarray]:
    """The arrays of ``x`` (itself for an array), in key order."""
    if isinstance(x, dict):
        return [a for k in sorted(x) for a in leaves(x[k])]
    return [x]


def _map(fn: Callable[[np.ndarray], np.ndarray], x: Rows) -> Rows:
    return {k: _map(fn, v) for k, v in x.items()} if isinstance(x, dict) else fn(np.asarray(x))


def num_rows(x: Rows) -> int:
    """The common leading dimension n; ValueError if the leaves disagree."""
    sizes = {len(a) for a in leaves(x)}
    if len(sizes) != 1:
        raise ValueError(f"inputs: leaves with different numbers of rows {sorted(sizes)}")
    return sizes.pop()


def take(x: Rows, index: Any) -> Rows:
    """``x[index]`` on every leaf (a slice, an int array or a bool mask over rows)."""
    return _map(lambda a: a[index], x)


def pad(x: Rows, n: int) -> Rows:
    """``x`` [m, ...] -> [n, ...] (n >= m > 0). An array gets zero rows; a dict copies of
    its first row, so padded rows stay valid inputs (a NaFlex row with no patch would
    give NaN: an empty mean, a 0 x 0 position grid). Padded rows' outputs are dropped."""
    m = num_rows(x)
    if n == m:
        return x
    if isinstance(x, dict):
        return _map(lambda a: np.concatenate([a, np.repeat(a[:1], n - m, axis=0)]), x)
    return np.concatenate([x, np.zeros((n - m, *x.shape[1:]), x.dtype)])


def concat(parts: Sequence[Rows]) -> Rows:
    """Row-wise concatenation of inputs of one structure."""
    if isinstance(parts[0], dict):
        return {k: concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])


def nbytes(x: Rows) -> int:
    """Bytes of all leaves."""
    return sum(np.asarray(a).nbytes for a in leaves(x))


def row_keys(x: Rows) -> np.ndarray:
    """uint8 [n, k]: row i's bytes over all leaves; equal rows of ``x`` have equal keys
    (for de-duplicating rows with ``np.unique(..., axis=0)``)."""
    n = num_rows(x)
    return np.concatenate(
        [np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in leaves(x)], axis=1
    )
