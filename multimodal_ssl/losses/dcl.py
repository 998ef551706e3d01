"""Decoupled contrastive learning (DCL; Yeh et al., ECCV 2022, arXiv 2110.06848).

CLIP's cross-entropy with the positive removed from the denominator, both directions::

    l_ij = exp(t) * x_i . y_j
    L = 1/(2B) sum_i [ (log sum_{j != i} exp l_ij - l_ii) + (log sum_{j != i} exp l_ji - l_ii) ]

This is the cross-modal form (the negatives of x_i are the other y_j, as in CLIP); the
paper's SimCLR form also counts the other view's rows of the same modality. Removing the
positive decouples the gradient of the positive from the negatives (no
``1 - p_ii`` damping at small batch). The loss can be negative; it needs B >= 2.

Implementations as :func:`multimodal_ssl.losses.softmax_loss` (``global``,
``all_gather``, ``ring``; equal in value and gradient); the sharded ones are CLIP's with
the positives kept out of the log-sum-exps (``decoupled=True`` of
``pairwise.softmax_all_gather`` and ``ring_softmax.softmax_ring``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from multimodal_ssl.losses import common, pairwise
from multimodal_ssl.losses.ring_softmax import softmax_ring


@jax.jit
def dcl_global(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    """DCL on the dense ``[B, B]`` logits. x, y: ``[B, d]``; t: scalar log-scale."""
    acc = common.acc_dtype(x)
    logits = jnp.exp(t.astype(acc)) * pairwise._dense_dot(x, y)
    eye = pairwise._diagonal_mask(logits)
    pos = jnp.sum(jnp.where(eye, logits, 0), axis=1)
    negatives = jnp.where(eye, -jnp.inf, logits)
    img2txt = jnp.mean(jax.nn.logsumexp(negatives, axis=1) - pos)
    txt2img = jnp.mean(jax.nn.logsumexp(negatives, axis=0) - pos)
    return (img2txt + txt2img) / 2


def dcl_loss(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array | float,
    *,
    impl: str = "global",
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    batch_axes: Sequence[str] | str | None = None,
) -> jax.Array:
    """DCL loss (module docstring). x, y: ``[B, d]`` (row i pairs with row i, B >= 2);
    t: scalar log-scale; ``impl``, ``mesh``, ``chunk_size``, ``batch_axes`` as
    :func:`multimodal_ssl.losses.softmax_loss`. Returns a scalar."""
    x, y = common.prepare_pair(x, y, impl, mesh, chunk_size, batch_axes)
    if x.shape[0] < 2:
        raise ValueError(f"dcl needs a batch of at least 2 rows (negatives), got {x.shape}")
    t = common.check_scalar("t", t)
    if impl == "global":
        return dcl_global(x, y, t)
    body = partial(pairwise.softmax_all_gather, decoupled=True)
    if impl == "ring":
        body = partial(softmax_ring, chunk_size=chunk_size, decoupled=True)
    return common.run_sharded(body, mesh, batch_axes, impl, x, y, t)


def dcl_masked(x: jax.Array, y: jax.Array, t: jax.Array, vx: jax.Array, vy: jax.Array):
    """DCL where rows may be absent (``vx, vy: bool [B]``), dense: over the complete rows
    i, the cross-entropy against the present partners j != i, both directions, summed and
    divided by the number of complete rows (a direction without any such partner adds 0).
    With every row present this equals :func:`dcl_global`."""
    acc = common.acc_dtype(x)
    logits = jnp.exp(t.astype(acc)) * jnp.einsum("id,jd->ij", x, y, preferred_element_type=acc)
    very_negative = jnp.finfo(acc).min  # finite: a row without partners must not give NaN
    eye = jnp.eye(x.shape[0], dtype=bool)
    complete = vx & vy
    pos = jnp.diagonal(logits)
    row_lse = jax.nn.logsumexp(jnp.where(vy[None, :] & ~eye, logits, very_negative), axis=1)
    col_lse = jax.nn.logsumexp(jnp.where(vx[:, None] & ~eye, logits, very_negative), axis=0)
    rows_ok = complete & (jnp.sum(vy) > 1)  # a complete row has itself and another present
    cols_ok = complete & (jnp.sum(vx) > 1)
    n = jnp.maximum(jnp.sum(complete), 1).astype(logits.dtype)
    img2txt = jnp.sum(jnp.where(rows_ok, row_lse - pos, 0)) / n
    txt2img = jnp.sum(jnp.where(cols_ok, col_lse - pos, 0)) / n
    return (img2txt + txt2img) / 2
