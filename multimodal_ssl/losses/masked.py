"""Dense SigLIP / CLIP losses over a batch in which some rows lack a modality.

A mixture of sources with different modality sets gives per-example presence masks
``vx, vy: bool [B]``. A pair (i, j) takes part only if ``x_i`` and ``y_j`` exist; the
positives are the rows where both exist. With every row present these equal
``pairwise.sigmoid_global`` / ``softmax_global``; with none present the loss is 0.

* sigmoid: ``-1/n_x * sum_{i: vx_i} sum_{j: vy_j} log sigmoid(z_ij (s x_i.y_j + b))``
  with ``n_x = #{i: vx_i}`` (as ``1/B`` in SigLIP).
* softmax: the mean over complete rows ``i`` (``vx_i and vy_i``) of the image->text
  cross-entropy over the present texts, and symmetrically text->image, averaged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from multimodal_ssl.losses.common import acc_dtype


def _logits(x: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    acc = acc_dtype(x)
    return jnp.exp(t.astype(acc)) * jnp.einsum("id,jd->ij", x, y, preferred_element_type=acc)


def sigmoid_masked(
    x: jax.Array, y: jax.Array, t: jax.Array, b: jax.Array, vx: jax.Array, vy: jax.Array
) -> jax.Array:
    """x, y: [B, d]; t, b: scalars; vx, vy: bool [B] -> scalar (see module docstring)."""
    logits = _logits(x, y, t) + b.astype(acc_dtype(x))
    eye = jnp.eye(x.shape[0], dtype=bool)
    terms = jax.nn.log_sigmoid(jnp.where(eye, logits, -logits))
    pair = vx[:, None] & vy[None, :]
    n_x = jnp.maximum(jnp.sum(vx), 1).astype(logits.dtype)
    return -jnp.sum(jnp.where(pair, terms, 0)) / n_x


def softmax_masked(
    x: jax.Array, y: jax.Array, t: jax.Array, vx: jax.Array, vy: jax.Array
) -> jax.Array:
    """x, y: [B, d]; t: scalar; vx, vy: bool [B] -> scalar (see module docstring)."""
    logits = _logits(x, y, t)
    very_negative = jnp.finfo(logits.dtype).min
    complete = vx & vy
    pos = jnp.diagonal(logits)
    row_lse = jax.nn.logsumexp(jnp.where(vy[None, :], logits, very_negative), axis=1)
    col_lse = jax.nn.logsumexp(jnp.where(vx[:, None], logits, very_negative), axis=0)
    n = jnp.maximum(jnp.sum(complete), 1).astype(logits.dtype)
    img2txt = jnp.sum(jnp.where(complete, row_lse - pos, 0)) / n
    txt2img = jnp.sum(jnp.where(complete, col_lse - pos, 0)) / n
    return (img2txt + txt2img) / 2
