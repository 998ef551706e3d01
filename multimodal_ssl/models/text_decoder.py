"""LocCa's text decoder (SigLIP 2): a small transformer decoder that reads the image
tower's un-pooled patch tokens through cross-attention. Training only; the towers and
the embeddings they give are unchanged by its presence.

Pre-LN blocks: ``x + SelfAttn(LN(x))`` (causal, or bidirectional for the rows trained
with parallel prediction, CapPa), ``x + CrossAttn(LN(x), memory)``, ``x + MLP(LN(x))``;
learned token and position embeddings; a final LN and a linear read-out to the vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from multimodal_ssl.models.common import MlpBlock, compute_dtype, layer_norm


def attention_mask(valid: jax.Array, parallel: jax.Array) -> jax.Array:
    """Self-attention mask bool [b, 1, T, T]: query i sees key j when j is a real input
    (``valid`` [b, T]) and ``j <= i`` (causal), or any real j for rows with
    ``parallel`` [b] True. A query on a padded position sees key 0 (never empty)."""
    t = valid.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = jnp.where(parallel[:, None, None], True, causal[None]) & valid[:, None, :]
    mask = mask.at[:, :, 0].set(True)
    return mask[:, None]


class DecoderBlock(nn.Module):
    """x [b, T, d], memory [b, L, d] -> [b, T, d]."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, memory, mask, *, train: bool = False):
        attn = {"num_heads": self.num_heads, "dtype": self.dtype, "deterministic": True}
        drop = nn.Dropout(rate=self.dropout, deterministic=not train)
        y = layer_norm(self.dtype, "LayerNorm_0")(x)
        x = x + drop(nn.MultiHeadDotProductAttention(**attn, name="SelfAttention")(y, y, mask=mask))
        y = layer_norm(self.dtype, "LayerNorm_1")(x)
        x = x + drop(nn.MultiHeadDotProductAttention(**attn, name="CrossAttention")(y, memory))
        y = layer_norm(self.dtype, "LayerNorm_2")(x)
        mlp = MlpBlock(self.mlp_dim, dropout=self.dropout, dtype=self.dtype, name="MlpBlock")
        return x + drop(mlp(y, train=train))


class TextDecoder(nn.Module):
    """(inputs i32 [b, T], memory [b, L, d_mem], valid bool [b, T], parallel bool [b])
    -> logits f32 [b, T, vocab_size].

    ``memory``: the image tower's patch tokens; layer-normed and projected to ``width``.
    Sharding: batch-sharded like every activation (no cross-example interaction)."""

    vocab_size: int
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    max_len: int = 64
    dropout: float = 0.0
    dtype: Any = "float32"

    @nn.compact
    def __call__(self, inputs, memory, valid, parallel, *, train: bool = False) -> jax.Array:
        dtype = compute_dtype(self.dtype)
        b, t = inputs.shape
        if t > self.max_len:
            raise ValueError(f"TextDecoder: {t} positions exceed max_len {self.max_len}")
        embed = nn.Embed(self.vocab_size, self.width, name="Embed")
        pos = self.param(
            "posemb", nn.initializers.normal(stddev=0.02), (self.max_len, self.width)
        )
        x = (embed(inputs) + pos[:t]).astype(dtype)
        memory = layer_norm(dtype, "MemoryNorm")(memory.astype(dtype))
        memory = nn.Dense(self.width, dtype=dtype, name="MemoryProj")(memory)
        mask = attention_mask(valid, parallel)
        for i in range(self.depth):
            x = DecoderBlock(
                self.num_heads, self.mlp_dim, self.dropout, dtype, name=f"Block_{i}"
            )(x, memory, mask, train=train)
        x = layer_norm(dtype, "FinalNorm")(x)
        return nn.Dense(self.vocab_size, dtype=dtype, name="Head")(x).astype(jnp.float32)
