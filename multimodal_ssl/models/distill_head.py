"""The projection head of self-distillation (DINO, Caron et al. 2021; SILC; SigLIP 2).

features [..., d] -> MLP (``hidden``, GELU, ``hidden``, GELU, ``bottleneck``) -> L2
normalisation -> cosine logits against ``prototypes`` weight-normalised columns
(DINO's weight-normalised last layer with its gain fixed to 1) -> f32 [..., prototypes].
Param tree: ``Dense_0``, ``Dense_1``, ``Dense_2`` (kernel, bias), ``prototypes
[bottleneck, K]``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from multimodal_ssl.models.towers import l2_normalize


class DistillHead(nn.Module):
    """See the module docstring. Computes in float32 whatever the input dtype."""

    hidden: int
    bottleneck: int
    prototypes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = l2_normalize(nn.Dense(self.bottleneck)(x))
        w = self.param(
            "prototypes", nn.initializers.normal(0.02), (self.bottleneck, self.prototypes)
        )
        w = w * jax.lax.rsqrt(jnp.maximum(jnp.sum(w * w, axis=0, keepdims=True), 1e-12))
        return (x @ w).reshape(*shape, self.prototypes)
