"""Geometry of the embedding space, from N paired image/text embeddings ``x_i``, ``y_i``:

* ``alignment`` (Wang & Isola, 2020): ``mean_i ||x_i - y_i||^2``; 0 = pairs coincide.
* ``uniformity_{image,text}`` (ibid.): ``log mean_{i != j} exp(-t ||x_i - x_j||^2)``
  over the N(N-1) ordered pairs of one modality (t = 2); lower = more uniform on the
  sphere, down to about -4 for many unit vectors. Computed in row chunks.
* ``modality_gap`` (Liang et al., 2022): ``||mean_i x_i - mean_i y_i||``.
* ``effective_rank_{image,text}`` (Roy & Vetterli, 2007; RankMe): ``exp(H(p))`` with
  ``p = s / sum(s)`` for the singular values s of the (uncentred) [N, d] embedding
  matrix; between 1 (rank one) and min(N, d) (all singular values equal).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from multimodal_ssl.evals import common


@jax.jit
def _chunk_log_sum_exp(
    queries: jax.Array, points: jax.Array, start: jax.Array, t: jax.Array
) -> jax.Array:
    """queries [c, d] (rows start.. of points), points [N, d] -> [c]: per query row i,
    ``logsumexp_{j != i} -t ||q_i - p_j||^2``."""
    dots = jnp.matmul(queries, points.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(queries**2, axis=1)[:, None] + jnp.sum(points**2, axis=1)[None, :] - 2 * dots
    rows = start + jnp.arange(queries.shape[0])[:, None]
    logits = jnp.where(rows == jnp.arange(points.shape[0])[None, :], -jnp.inf, -t * sq.clip(0))
    return jax.nn.logsumexp(logits, axis=1)


def uniformity(x: np.ndarray, *, t: float = 2.0, chunk_size: int | None = None) -> float:
    """``log mean_{i != j} exp(-t ||x_i - x_j||^2)`` for x [N, d], N >= 2; rows scored
    ``chunk_size`` at a time (None: ``[chunk, N]`` fills ``SCORE_BLOCK_ELEMENTS``)."""
    x = common.check_embeddings("x", x)
    n = len(x)
    if n < 2:
        raise ValueError(f"x: uniformity needs >= 2 embeddings, got {n}")
    if chunk_size is None:
        chunk_size = max(1, common.SCORE_BLOCK_ELEMENTS // n)
    common.check_int("chunk_size", chunk_size)
    chunk_size = min(chunk_size, n)
    points = jnp.asarray(x)
    row_lse = []
    for start in range(0, n, chunk_size):
        q = x[start : start + chunk_size]
        rows = len(q)
        if rows < chunk_size:  # one compiled shape; padded rows are dropped below
            q = np.concatenate([q, np.zeros((chunk_size - rows, x.shape[1]), x.dtype)])
        out = _chunk_log_sum_exp(jnp.asarray(q), points, jnp.int32(start), jnp.float32(t))
        row_lse.append(np.asarray(out, np.float64)[:rows])
    return float(np.logaddexp.reduce(np.concatenate(row_lse)) - np.log(n * (n - 1.0)))


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of x [N, d] (not centred)."""
    x = common.check_embeddings("x", x).astype(np.float64)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    if s.sum() == 0:
        raise ValueError("x: all zero, the effective rank is undefined")
    p = s[s > 0] / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def geometry_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, *, t: float = 2.0, chunk_size: int | None = None
) -> dict[str, float]:
    """Alignment, uniformity, modality gap and effective rank (module docstring).

    Args:
      image_emb, text_emb: [N, d] float, row i of each a matching pair (N >= 2).
      t: the uniformity temperature; chunk_size: rows per uniformity chunk.
    Returns:
      {"alignment", "uniformity_image", "uniformity_text", "modality_gap",
      "effective_rank_image", "effective_rank_text"}.
    """
    image_emb = common.check_embeddings("image_emb", image_emb)
    text_emb = common.check_embeddings("text_emb", text_emb, dim=image_emb.shape[1])
    if len(text_emb) != len(image_emb):
        raise ValueError(
            f"text_emb: expected one row per image ({len(image_emb)}), got {len(text_emb)}"
        )
    x, y = image_emb.astype(np.float64), text_emb.astype(np.float64)
    return {
        "alignment": float(np.mean(np.sum((x - y) ** 2, axis=1))),
        "uniformity_image": uniformity(image_emb, t=t, chunk_size=chunk_size),
        "uniformity_text": uniformity(text_emb, t=t, chunk_size=chunk_size),
        "modality_gap": float(np.linalg.norm(x.mean(axis=0) - y.mean(axis=0))),
        "effective_rank_image": effective_rank(image_emb),
        "effective_rank_text": effective_rank(text_emb),
    }


class GeometryEvaluator(common.PairEvaluator):
    """Geometry of the embeddings of the (``query``, ``candidates``) pairs of ``data``
    (default image, text). Keys (besides the common ones): ``uniformity_t``. Metrics:
    ``eval/<name>/{alignment, uniformity_<q>, uniformity_<c>, modality_gap,
    effective_rank_<q>, effective_rank_<c>}`` (``uniformity_image``, ...)."""

    TYPE = "geometry"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.uniformity_t = 2.0
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        t = cfg["uniformity_t"]
        if not isinstance(t, float | int) or isinstance(t, bool) or not t > 0:
            raise ValueError(f"evals.{name}.uniformity_t: must be a number > 0, got {t!r}")

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        q, c = self.config["query"], self.config["candidates"]
        q_emb, kept = common.embed_pass(self.data.batches(), q, embed[q], (c,))
        c_emb = common.embed_in_batches(embed[c], kept[c], self.batch_size)
        metrics = geometry_metrics(q_emb, c_emb, t=float(self.config["uniformity_t"]))
        rename = {"image": q, "text": c}
        return self._prefixed(
            {
                re.sub(r"_(image|text)$", lambda m: f"_{rename[m.group(1)]}", k): v
                for k, v in metrics.items()
            }
        )
