"""DeCUR (Wang et al., ECCV 2024, "Decoupling Common and Unique Representations for
Multimodal Self-supervised Learning", arXiv 2309.05300): Barlow-Twins redundancy
reduction with the embedding dimensions split into *common* ones (shared by the two
modalities) and *unique* ones (modality-specific).

For ``x, y: [B, d]`` (un-normalised projections; row i of x pairs with row i of y)
each column is standardised over the batch (BatchNorm without affine,
``bn(z) = (z - mean) / sqrt(var + eps)``, biased variance) and

    C = bn(x).T @ bn(y) / B                                    [d, d]
    L_bt(C)   = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2   (Barlow Twins)
    L_cross   = (L_bt(C[:K, :K]) + L_u(C[K:, K:])) / 2
    L_u(C')   = sum_i C'_ii^2 + lambda * sum_{i != j} C'_ij^2

with ``K = round(common_fraction * d)`` common dimensions (their diagonal pushed to 1:
aligned across modalities) and ``d - K`` unique ones (diagonal pushed to 0:
decorrelated across modalities). Intra-modal terms ``L_bt(C(z, z'))`` between two
augmented views of one modality reduce redundancy within each modality; the objective
is ``(L_cross + sum of the intra terms) / (1 + number of intra terms)`` (the paper's
``(L1 + L2 + L12) / 3`` with both intra terms). Defaults follow the authors' code
(github.com/zhu-xlab/DeCUR): ``lambda = 0.0051``, 448 of 512 dims common (7/8).

The cross-correlation is a batch reduction: under ``jit`` XLA partitions it from the
input shardings (rows sharded over the batch axes); no ring form is needed (memory
``O(d^2)``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.losses.common import acc_dtype
from multimodal_ssl.losses.objectives import Objective, parse_pairs, register_objective


def batch_standardize(z: jax.Array, eps: float) -> jax.Array:
    """``z: [B, d]`` -> each column minus its batch mean over ``sqrt(var + eps)``
    (biased variance; BatchNorm1d(affine=False) in training mode), in >= f32."""
    z = z.astype(acc_dtype(z))
    centred = z - jnp.mean(z, axis=0, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=0, keepdims=True) + eps)


def cross_correlation(x: jax.Array, y: jax.Array, eps: float) -> jax.Array:
    """``bn(x).T @ bn(y) / B``: ``[B, d] x [B, d] -> [d, d]``."""
    bx, by = batch_standardize(x, eps), batch_standardize(y, eps)
    return jnp.einsum("bi,bj->ij", bx, by) / x.shape[0]


def _diag_off(c: jax.Array, target: float, weight: float) -> jax.Array:
    """``sum_i (C_ii - target)^2 + weight * sum_{i != j} C_ij^2`` of a square ``c``."""
    eye = jnp.eye(c.shape[0], dtype=bool)
    on = jnp.sum(jnp.where(eye, c - target, 0.0) ** 2)
    return on + weight * jnp.sum(jnp.where(eye, 0.0, c) ** 2)


def barlow_twins_loss(
    x: jax.Array, y: jax.Array, off_diagonal_weight: float, eps: float = 1e-5
) -> jax.Array:
    """Barlow Twins: ``L_bt(C)`` of the module docstring; x, y ``[B, d]`` -> scalar."""
    return _diag_off(cross_correlation(x, y, eps), 1.0, off_diagonal_weight)


def decur_cross_loss(
    x: jax.Array,
    y: jax.Array,
    common_dims: int,
    off_diagonal_weight: float,
    eps: float = 1e-5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DeCUR's cross-modal term: ``(L_cross, L_common, L_unique)`` for x, y ``[B, d]``;
    the first ``common_dims`` dimensions are common, the rest unique."""
    if not 1 <= common_dims <= x.shape[1]:
        raise ValueError(f"common_dims must be in [1, {x.shape[1]}], got {common_dims}")
    c = cross_correlation(x, y, eps)
    k = common_dims
    common = _diag_off(c[:k, :k], 1.0, off_diagonal_weight)
    unique = _diag_off(c[k:, k:], 0.0, off_diagonal_weight)
    return (common + unique) / 2, common, unique


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config.loss.{key}: {message}")


@register_objective
class DeCUR(Objective):
    """DeCUR (module docstring) on one modality pair, with optional intra-modal views.

    Keys: ``pairs`` (one pair ``"a-b"``), ``views`` (``""`` or intra-modal pairs of a
    modality and its second view, ``"image-image_view2,depth-depth_view2"``: inputs of
    ``data.views``), ``common_fraction`` (K / d), ``off_diagonal_weight`` (lambda),
    ``eps`` (BatchNorm). No params. Receives the towers' un-normalised projections
    (``unit_rows = False``). Metrics: ``train/loss/<a>_<b>`` (cross term),
    ``train/loss/common``, ``train/loss/unique``, ``train/loss/<m>_<view>`` (intra).
    """

    NAME = "decur"
    unit_rows = False

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.pairs = "image-text"
        cfg.views = ""
        cfg.common_fraction = 448 / 512
        cfg.off_diagonal_weight = 0.0051
        cfg.eps = 1e-5
        return cfg

    @classmethod
    def resolve(cls, cfg, modalities):
        out = super().resolve(cfg, modalities)
        out["pairs"] = parse_pairs(out["pairs"], modalities)
        if len(out["pairs"]) != 1:
            _fail("pairs", f"DeCUR binds one pair of modalities, got {out['pairs']}")
        views = []
        if out["views"]:
            try:
                views = parse_pairs(out["views"], modalities)
            except ValueError as e:
                raise ValueError(str(e).replace("config.loss.pairs", "config.loss.views")) from None
        out["views"] = views
        f = out["common_fraction"]
        if not isinstance(f, int | float) or not 0 < f <= 1:
            _fail("common_fraction", f"must be in (0, 1], got {f!r}")
        lam, eps = out["off_diagonal_weight"], out["eps"]
        if not isinstance(lam, int | float) or lam < 0:
            _fail("off_diagonal_weight", f"must be a number >= 0, got {lam!r}")
        if not isinstance(eps, int | float) or eps <= 0:  # a constant dimension: 0 / sqrt(eps)
            _fail("eps", f"must be a number > 0, got {eps!r}")
        return out

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        used = {m for p in (*self.config["pairs"], *self.config["views"]) for m in p}
        if self.optional & used:
            _fail(
                "name",
                f"'decur' needs every example to have {sorted(used)}, but some training "
                f"sources lack {sorted(self.optional & used)}",
            )

    def common_dims(self, d: int) -> int:
        """K of the module docstring for embeddings of dim ``d`` (at least 1)."""
        return min(d, max(1, math.floor(self.config["common_fraction"] * d + 0.5)))

    def init_params(self) -> dict[str, jax.Array]:
        return {}

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        lam, eps = self.config["off_diagonal_weight"], self.config["eps"]
        (a, b), = self.config["pairs"]
        x, y = embeddings[a], embeddings[b]
        cross, common, unique = decur_cross_loss(x, y, self.common_dims(x.shape[1]), lam, eps)
        metrics: dict[str, Any] = {
            f"train/loss/{a}_{b}": cross,
            "train/loss/common": common,
            "train/loss/unique": unique,
        }
        total = cross
        for m, v in self.config["views"]:
            intra = barlow_twins_loss(embeddings[m], embeddings[v], lam, eps)
            metrics[f"train/loss/{m}_{v}"] = intra
            total = total + intra
        return total / (1 + len(self.config["views"])), metrics
