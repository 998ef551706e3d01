"""Text transformer of SigLIP / big_vision: bidirectional pre-LN encoder over tokens.

Param tree (big_vision names): ``Embed_0/embedding [vocab_size, d]``,
``pos_embedding [1, max_len, d]``, ``Encoder_0/{encoderblock_{i}, encoder_norm}``,
``MAPHead_0`` (pool "map"), ``head/{kernel, bias}`` (when ``num_classes``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from multimodal_ssl.models.activation_sharding import Embed
from multimodal_ssl.models.common import (
    add_learned_positions,
    compute_dtype,
    encode_and_pool,
)
from multimodal_ssl.models.variants import resolve_sizes

POOLS = ("last", "first", "mean", "map")


class TextTransformer(nn.Module):
    """tokens i32 [b, L] (L <= max_len) -> [b, num_classes or width] float32.

    No attention mask (SigLIP convention: fixed-length sequences, padding attended to).
    Sizes come from ``variant`` (e.g. ``"B"``, ``"mu"``; no patch part), replaced by any
    of ``width``, ``depth``, ``mlp_dim``, ``num_heads`` that is set. ``pool``: ``"last"``
    (position -1, SigLIP), ``"first"``, ``"mean"`` or ``"map"``. ``num_classes=None``:
    no ``head``. ``dtype``: compute dtype; params are float32.
    ``dropout > 0`` applies only with ``train=True``, which then needs a "dropout" rng.
    ``scan``/``remat``: of the :class:`Encoder` (scanned layers, rematerialisation policy).
    ``stochastic_depth``: the :class:`Encoder`'s drop-path rate (of its last block; linear
    over depth), only with ``train=True``; draws on the "dropout" rng.
    """

    variant: str | None = None
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    vocab_size: int = 32_000
    max_len: int = 64
    pool: str = "last"
    num_classes: int | None = None
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = "float32"
    scan: bool = False
    remat: str = "none"
    stochastic_depth: float = 0.0

    def sizes(self) -> dict[str, Any]:
        """Resolved ``width, depth, mlp_dim, num_heads``."""
        return resolve_sizes(
            "TextTransformer",
            self.variant,
            {
                "width": self.width,
                "depth": self.depth,
                "mlp_dim": self.mlp_dim,
                "num_heads": self.num_heads,
            },
            with_patch=False,
        )

    @nn.compact
    def __call__(self, text: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if self.pool not in POOLS:
            raise ValueError(f"TextTransformer.pool: {self.pool!r} is not one of {list(POOLS)}")
        sizes = self.sizes()
        dtype = compute_dtype(self.dtype)
        width = sizes["width"]
        if text.ndim != 2 or not jnp.issubdtype(text.dtype, jnp.integer):
            raise ValueError(
                f"TextTransformer: text must be int [b, L], got {text.dtype}{text.shape}"
            )
        if text.shape[1] > self.max_len:
            raise ValueError(
                f"TextTransformer: text length {text.shape[1]} exceeds max_len {self.max_len}"
            )

        x = Embed(self.vocab_size, width, dtype=dtype, name="Embed_0")(text)
        x = add_learned_positions(self, x, self.max_len, dtype, train=train)

        return encode_and_pool(self, x, sizes, dtype, train=train, name="Encoder_0")
