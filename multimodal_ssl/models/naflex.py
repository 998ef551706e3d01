"""NaFlex (SigLIP 2) position embeddings: the learned square grid of a ViT resized to each
image's patch grid, as transformers' ``Siglip2VisionEmbeddings`` does with
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``.

The output grid size is a traced value (one compiled function for every image size), so
the resize is written as two dense weight matrices (rows: output positions, columns:
source rows/columns) instead of ``jax.image.resize``, which needs static shapes. The
weights are the antialiased triangle filter of PyTorch / PIL: for a source of ``n`` and an
output of ``m`` samples, ``scale = n / m``, ``support = max(scale, 1)`` and output ``i``
weighs source ``a`` by ``max(0, 1 - |a + 0.5 - scale * (i + 0.5)| / support)``,
normalised to sum 1 (plain bilinear interpolation when upsampling).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def antialias_weights(in_size: int, out_size: Any, index: Any, xp: Any = jnp) -> Any:
    """Resampling weights ``[..., in_size]`` of output positions ``index`` (int, any
    shape) for a resize of ``in_size`` samples to ``out_size`` (int or int array that
    broadcasts with ``index``). ``xp``: ``jnp`` (traceable) or ``np``. Rows sum to 1."""
    scale = xp.asarray(in_size, xp.float32) / xp.asarray(out_size, xp.float32)
    support = xp.maximum(scale, 1.0)
    center = scale * (xp.asarray(index, xp.float32) + 0.5)
    source = xp.arange(in_size, dtype=xp.float32) + 0.5
    w = xp.maximum(0.0, 1.0 - xp.abs(source - center[..., None]) / support[..., None])
    return w / xp.sum(w, axis=-1, keepdims=True)


def resize_posemb(table: jnp.ndarray, spatial_shapes: jnp.ndarray, length: int) -> jnp.ndarray:
    """table: [1, G*G, d] learned positions of a G x G grid (row-major); spatial_shapes:
    int [b, 2] patch rows and columns (h, w) of each image, with ``h * w <= length``
    -> f32 [b, length, d]: row ``k < h*w`` is the grid resized to (h, w) at
    (k // w, k % w); rows past ``h*w`` repeat row 0 (as transformers pads them).
    Computed in float32 at full matmul precision."""
    n = table.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embedding: {n} positions are not a square grid")
    h, w = spatial_shapes[:, :1], spatial_shapes[:, 1:]  # [b, 1]
    k = jnp.arange(length)[None]
    k = jnp.where(k < h * w, k, 0)  # [b, length]
    rows = antialias_weights(side, h, k // w)  # [b, length, G]
    cols = antialias_weights(side, w, k % w)  # [b, length, G]
    # Weights of every grid cell [b, length, G*G], then one matmul: no [b, length, G, d].
    weights = (rows[..., :, None] * cols[..., None, :]).reshape(*k.shape, n)
    return jnp.einsum(
        "bkn,nd->bkd", weights, table[0].astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
