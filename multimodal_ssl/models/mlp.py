"""Towers for non-image, non-text modalities: feature vectors and time series.

* :class:`MlpTower`: ``[b, features]`` -> residual MLP blocks -> ``[b, num_classes]``
  (sensor readings, tabular features, pre-computed embeddings).
* :class:`SequenceTower`: ``[b, steps, channels]`` -> per-step linear embedding +
  learned positions -> the shared pre-LN transformer encoder -> pooling
  (IMU / EEG / any multichannel time series).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from multimodal_ssl.models.common import (
    MlpBlock,
    add_learned_positions,
    compute_dtype,
    encode_and_pool,
    layer_norm,
)
from multimodal_ssl.models.variants import resolve_sizes


class MlpTower(nn.Module):
    """x f32 [b, features] -> [b, num_classes or width] f32.

    ``Dense(width)`` then ``depth`` pre-LN residual blocks ``x + MLP(LN(x))`` (hidden
    ``mlp_dim``), a final LayerNorm and the ``head``.
    """

    width: int = 128
    depth: int = 2
    mlp_dim: int = 512
    num_classes: int | None = None
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if x.ndim != 2:
            raise ValueError(f"MlpTower: input must be [b, features], got shape {x.shape}")
        dtype = compute_dtype(self.dtype)
        x = nn.Dense(self.width, dtype=dtype, name="input_proj")(x.astype(dtype))
        for i in range(self.depth):
            y = layer_norm(dtype, f"LayerNorm_{i}")(x)
            y = MlpBlock(
                self.mlp_dim, self.gelu_approximate, self.dropout, dtype, name=f"MlpBlock_{i}"
            )(y, train=train)
            x = x + y
        x = layer_norm(dtype, "encoder_norm")(x)
        if self.num_classes:
            x = nn.Dense(self.num_classes, dtype=dtype, name="head")(x)
        return x.astype(jnp.float32)


class SequenceTower(nn.Module):
    """x f32 [b, steps, channels] (steps <= max_len) -> [b, num_classes or width] f32.

    Sizes as the other transformer towers (``variant`` such as ``"mu"``, or ``width``,
    ``depth``, ``mlp_dim``, ``num_heads``); ``pool``: ``"mean"``, ``"first"``,
    ``"last"`` or ``"map"``. ``dropout``, ``stochastic_depth``: as the other towers.
    """

    variant: str | None = None
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    max_len: int = 256
    pool: str = "mean"
    num_classes: int | None = None
    gelu_approximate: bool = True
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    dtype: Any = "float32"
    scan: bool = False
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if x.ndim != 3 or x.shape[1] > self.max_len:
            raise ValueError(
                f"SequenceTower: input must be [b, steps <= {self.max_len}, channels], got "
                f"shape {x.shape}"
            )
        sizes = resolve_sizes(
            "SequenceTower",
            self.variant,
            {k: getattr(self, k) for k in ("width", "depth", "mlp_dim", "num_heads")},
            with_patch=False,
        )
        dtype = compute_dtype(self.dtype)
        width = sizes["width"]
        x = nn.Dense(width, dtype=dtype, name="input_proj")(x.astype(dtype))
        x = add_learned_positions(self, x, self.max_len, dtype, train=train)
        return encode_and_pool(self, x, sizes, dtype, train=train, name="Transformer")
