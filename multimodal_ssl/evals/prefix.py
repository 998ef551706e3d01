"""Evaluating nested embedding prefixes (Matryoshka, ``losses/matryoshka.py``): an eval's
``dims`` key re-runs it on the first ``m`` dimensions of every embedding, re-normalised,
for each ``m`` in ``dims``; metrics ``eval/<name>/d<m>/<metric>`` next to the full-width
``eval/<name>/<metric>``. The towers run once per input: every prefix reads the same
cached full embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

EmbedFn = Callable[[np.ndarray], Any]


def check_dims(key: str, value: Any) -> tuple[int, ...] | None:
    """``evals.<name>.dims``: None, or increasing positive ints; ValueError naming ``key``."""
    if value is None:
        return None
    dims = tuple(value) if isinstance(value, tuple | list) else ()
    ok = all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 1 for d in dims)
    if not dims or not ok or any(a >= b for a, b in zip(dims, dims[1:], strict=False)):
        raise ValueError(f"{key}: None or increasing ints >= 1, e.g. (16, 32), got {value!r}")
    return tuple(int(d) for d in dims)


class CachedEmbed:
    """``embed_fn`` remembering its outputs by the inputs' bytes (for one evaluator run)."""

    def __init__(self, embed_fn: EmbedFn):
        self.embed_fn, self.cache = embed_fn, {}

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(inputs)
        key = (inputs.shape, inputs.dtype.str, hashlib.sha1(inputs.tobytes()).hexdigest())
        if key not in self.cache:
            self.cache[key] = np.asarray(self.embed_fn(inputs), np.float32)
        return self.cache[key]


def prefix_embed(embed_fn: EmbedFn, dim: int, key: str) -> EmbedFn:
    """``inputs -> e[:, :dim] / |e[:, :dim]|`` (zero rows stay zero); ValueError naming
    ``key`` when the embeddings are narrower than ``dim``."""

    def fn(inputs):
        e = np.asarray(embed_fn(inputs), np.float32)
        if e.shape[1] < dim:
            raise ValueError(f"{key}: {dim} exceeds the embedding width {e.shape[1]}")
        p = e[:, :dim]
        return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-6)

    return fn


def run_at_prefixes(
    compute: Callable[[Mapping[str, EmbedFn]], dict[str, float]],
    embed: Mapping[str, EmbedFn],
    dims: tuple[int, ...] | None,
    name: str,
) -> dict[str, float]:
    """``compute(embed)`` (``{"eval/<name>/<metric>": v}``) at full width and, for each
    ``m`` in ``dims``, on the prefixes, renamed ``eval/<name>/d<m>/<metric>``."""
    if not dims:
        return compute(embed)
    cached = {m: CachedEmbed(fn) for m, fn in embed.items()}
    out = compute(cached)
    head = f"eval/{name}/"
    for dim in dims:
        fns = {m: prefix_embed(fn, dim, f"config.evals.{name}.dims") for m, fn in cached.items()}
        sub = compute(fns)
        out.update({f"{head}d{dim}/{k.removeprefix(head)}": v for k, v in sub.items()})
    return out
