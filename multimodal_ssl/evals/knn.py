"""k-nearest-neighbour classification on frozen image features (as in DINO / InstDisc).

Each test image votes with its k most similar train images (dot-product scores, in
query chunks so the [M, N] score matrix never exists). Neighbours are ordered by score,
equal scores by lower train index (``jax.lax.top_k``'s order). A neighbour's vote weighs
``exp((score - best_score) / temperature)`` (majority vote with ``temperature=None``); the
class with the largest total wins, equal totals going to the lower class index.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from multimodal_ssl.evals import common, frozen


@functools.partial(jax.jit, static_argnames="k")
def _chunk_neighbours(queries: jax.Array, bank: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """queries [c, d], bank [N, d] -> (scores [c, k] f32, indices [c, k] i32), best first."""
    scores = jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(scores, k)


def nearest_neighbours(
    queries: np.ndarray, bank: np.ndarray, k: int, *, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring bank rows of every query (ties: lower index first).

    Args:
      queries: [M, d] float; bank: [N, d] float with N >= k.
      chunk_size: query rows scored at once (None: ``[chunk, N]`` scores fill at most
        ``common.SCORE_BLOCK_ELEMENTS``).
    Returns:
      (scores [M, k] f32, indices [M, k] i64), best first.
    """
    queries = common.check_embeddings("queries", queries)
    bank = common.check_embeddings("bank", bank, dim=queries.shape[1])
    common.check_int("k", k)
    if k > len(bank):
        raise ValueError(f"k: {k} exceeds the {len(bank)} train examples")
    if chunk_size is None:
        chunk_size = max(1, common.SCORE_BLOCK_ELEMENTS // len(bank))
    common.check_int("chunk_size", chunk_size)
    chunk_size = min(chunk_size, max(len(queries), 1))
    bank_dev = jnp.asarray(bank)
    scores, indices = [], []
    for start in range(0, len(queries), chunk_size):
        q = queries[start : start + chunk_size]
        rows = len(q)
        if rows < chunk_size:  # one compiled shape for every chunk
            q = np.concatenate([q, np.zeros((chunk_size - rows, q.shape[1]), q.dtype)])
        s, i = _chunk_neighbours(jnp.asarray(q), bank_dev, k)
        scores.append(np.asarray(s)[:rows])
        indices.append(np.asarray(i)[:rows])
    if not scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(indices).astype(np.int64)


def knn_predict(
    scores: np.ndarray,
    neighbour_labels: np.ndarray,
    num_classes: int,
    temperature: float | None,
) -> np.ndarray:
    """scores [M, k] (best first), neighbour_labels [M, k] int -> predicted class [M] i64
    (weighted vote, see the module docstring)."""
    scores = np.asarray(scores, np.float64)
    if temperature is None:
        weights = np.ones_like(scores)
    else:
        weights = np.exp((scores - scores[:, :1]) / temperature)
    votes = np.zeros((len(scores), num_classes))
    rows = np.repeat(np.arange(len(scores)), scores.shape[1])
    np.add.at(votes, (rows, np.asarray(neighbour_labels).reshape(-1)), weights.reshape(-1))
    return np.argmax(votes, axis=1)


def knn_metrics(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    ks: Sequence[int] = (1, 20),
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-1 accuracy of k-NN classification for each k in ``ks``.

    Args:
      train_x: [N, d] float, the neighbour bank; train_y: [N] int labels.
      test_x: [M, d] float (M >= 1); test_y: [M] int labels.
      ks: numbers of neighbours, each in [1, N].
      temperature: vote weight ``exp((s - s_best) / temperature)``; None = one vote each.
      num_classes: C (None: 1 + the largest label).
      chunk_size: test rows scored at once (None: automatic).
    Returns:
      {f"knn@{k}_top1": accuracy in [0, 1] for k in ks}.
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    for key, y, x in (("train_y", train_y, train_x), ("test_y", test_y, test_x)):
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{key}: expected int [{len(x)}], got {y.dtype} {y.shape}")
        if len(y) == 0 or y.min() < 0:
            raise ValueError(f"{key}: expected >= 1 label, all >= 0")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature: must be > 0 or None, got {temperature!r}")
    if not ks:
        raise ValueError("ks: empty")
    for k in ks:
        common.check_int("ks", k)
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    scores, indices = nearest_neighbours(test_x, train_x, max(ks), chunk_size=chunk_size)
    labels = train_y[indices]
    return {
        f"knn@{k}_top1": float(
            np.mean(knn_predict(scores[:, :k], labels[:, :k], num_classes, temperature) == test_y)
        )
        for k in ks
    }


class KnnEvaluator(frozen.FrozenFeaturesEvaluator):
    """k-NN classification of the ``data`` images by ``label`` with the ``train_data``
    images as neighbours. Keys (besides the common ones and ``train_data``,
    ``max_train_examples``): ``ks`` (tuple of k), ``temperature`` (float > 0 or None).
    Metrics: ``eval/<name>/knn@<k>_top1``."""

    TYPE = "knn"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.ks = (1, 20)
        cfg.temperature = 0.07  # None = majority vote
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        ks = cfg["ks"]
        if isinstance(ks, str) or not isinstance(ks, Sequence) or not ks:
            raise ValueError(f"evals.{name}.ks: expected a non-empty tuple of ints, got {ks!r}")
        for k in ks:
            common.check_int(f"evals.{name}.ks", k)
        temperature = cfg["temperature"]
        if temperature is not None and (
            not isinstance(temperature, float | int) or not temperature > 0
        ):
            raise ValueError(f"evals.{name}.temperature: must be > 0 or None, got {temperature!r}")

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        train_x, train_y, test_x, test_y, num_classes = self.features(embed)
        metrics = knn_metrics(
            train_x,
            train_y,
            test_x,
            test_y,
            ks=tuple(self.config["ks"]),
            temperature=self.config["temperature"],
            num_classes=num_classes,
        )
        return self._prefixed(metrics)
