"""Dense pairwise contrastive losses: SigLIP (sigmoid) and CLIP (softmax).

Two implementations of each, equal in value and gradient:

* ``*_global``: the plain ``[B, B]`` math; under ``jit`` XLA partitions it from the
  input shardings (what big_vision does).
* ``*_all_gather``: inside ``jax.shard_map`` over the batch axes, each device gathers all
  texts and scores its local ``[b, B]`` block; the loss is ``psum``-med.

Conventions (``s = exp(t)``, ``l_ij = s * x_i . y_j``):

* sigmoid: ``-1/B * sum_{i,j} log sigmoid(z_ij * (l_ij + bias))``, ``z_ii = +1``, else -1.
* softmax: ``(CE(image->text) + CE(text->image)) / 2``, each a mean over the batch.

Logits are formed in at least float32 (``preferred_element_type``) whatever the
embedding dtype; ``log_sigmoid`` and max-subtracted ``logsumexp`` keep |logits| ~ 1e3
finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from multimodal_ssl.losses.common import acc_dtype


def _dense_dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x @ y.T`` in the accumulation dtype: ``[B, d] x [B, d] -> [B, B]``.

    With Explicit-sharded rows of ``x`` the product keeps that row sharding (a product
    sharded on the same mesh axes in both dimensions is not a legal type).
    """
    sharding = jax.typeof(x).sharding
    out = None
    if isinstance(sharding, NamedSharding) and len(sharding.spec) and sharding.spec[0]:
        out = sharding.update(spec=P(sharding.spec[0], None))
    return jnp.einsum("id,jd->ij", x, y, preferred_element_type=acc_dtype(x), out_sharding=out)


def _diagonal_mask(logits: jax.Array) -> jax.Array:
    """``[B, B]`` bool, True on the diagonal, sharded like ``logits``."""
    sharding = jax.typeof(logits).sharding
    out = sharding if isinstance(sharding, NamedSharding) and any(sharding.spec) else None
    r, c = (jax.lax.broadcasted_iota(jnp.int32, logits.shape, k, out_sharding=out) for k in (0, 1))
    return r == c


@jax.jit
def sigmoid_global(x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array) -> jax.Array:
    """SigLIP loss on the dense ``[B, B]`` logits.

    x, y: ``[B, d]`` any float dtype; t (log-scale), b (bias): scalars.
    Returns a scalar in the accumulation dtype (f32, or f64 for f64 inputs).
    """
    acc = acc_dtype(x)
    logits = jnp.exp(t.astype(acc)) * _dense_dot(x, y) + b.astype(acc)
    eye = _diagonal_mask(logits)
    return -jnp.sum(jax.nn.log_sigmoid(jnp.where(eye, logits, -logits))) / x.shape[0]


@jax.jit
def softmax_global(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    """CLIP loss on the dense ``[B, B]`` logits.

    x, y: ``[B, d]`` any float dtype; t: scalar log-scale. Returns a scalar (f32 or f64).
    """
    acc = acc_dtype(x)
    logits = jnp.exp(t.astype(acc)) * _dense_dot(x, y)
    pos = jnp.sum(jnp.where(_diagonal_mask(logits), logits, 0), axis=1)
    img2txt = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
    txt2img = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
    return (img2txt + txt2img) / 2


def _gathered_block(
    x: jax.Array, y: jax.Array, t: jax.Array, axes: tuple[str, ...]
) -> tuple[jax.Array, jax.Array]:
    """Local logits ``s * x_local @ y_all.T`` ``[b, B]`` and the positives mask ``[b, B]``."""
    acc = acc_dtype(x)
    y_all = jax.lax.all_gather(y, axes, tiled=True)
    logits = jnp.exp(t.astype(acc)) * jnp.einsum("id,jd->ij", x, y_all, preferred_element_type=acc)
    n = x.shape[0]
    rows = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    return logits, cols == rows + jax.lax.axis_index(axes) * n


def sigmoid_all_gather(
    x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array, *, axes: tuple[str, ...], W: int
) -> jax.Array:
    """Per-device SigLIP body for ``jax.shard_map``: x, y local ``[b, d]``; t, b replicated.

    Returns the global loss (``psum`` over ``axes``), replicated.
    """
    logits, pos = _gathered_block(x, y, t, axes)
    logits = logits + b.astype(logits.dtype)
    local = -jnp.sum(jax.nn.log_sigmoid(jnp.where(pos, logits, -logits)))
    return jax.lax.psum(local, axes) / (x.shape[0] * W)


def softmax_all_gather(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array,
    *,
    axes: tuple[str, ...],
    W: int,
    decoupled: bool = False,
) -> jax.Array:
    """Per-device CLIP body for ``jax.shard_map``: x, y local ``[b, d]``; t replicated.

    Row log-sum-exps are local; column ones combine every device's ``[b, B]`` block with a
    ``pmax`` (no gradient needed: the shift cancels) and a ``psum`` of the shifted sums.
    ``decoupled`` (DCL, ``losses/dcl.py``): the positives stay out of the log-sum-exps.
    Returns the global loss, replicated.
    """
    n = x.shape[0]
    logits, pos_mask = _gathered_block(x, y, t, axes)
    pos = jnp.sum(jnp.where(pos_mask, logits, 0), axis=1)
    if decoupled:
        logits = jnp.where(pos_mask, -jnp.inf, logits)
    row_lse = jax.nn.logsumexp(logits, axis=1)
    col_max = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=0)), axes)
    col_sum = jax.lax.psum(jnp.sum(jnp.exp(logits - col_max), axis=0), axes)
    col_lse = col_max + jnp.log(col_sum)
    own_cols = jax.lax.dynamic_slice_in_dim(col_lse, jax.lax.axis_index(axes) * n, n)
    local = jnp.sum(row_lse - pos) + jnp.sum(own_cols - pos)
    return jax.lax.psum(local, axes) / (2 * n * W)
