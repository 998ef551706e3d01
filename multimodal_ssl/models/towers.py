"""Two-tower contrastive model (CLIP / SigLIP): image and text towers, each ending in
a projection to ``embed_dim``, plus the scalar log-temperature ``t`` and bias ``b``.

Param tree: ``img`` (a :class:`ViT`), ``txt`` (a :class:`TextTransformer`), ``t`` and
``b`` (f32 scalars) — big_vision's two_towers layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from multimodal_ssl.models.text import TextTransformer
from multimodal_ssl.models.vit import ViT

# Squared-norm floor of l2_normalize: embeddings with norm < 1e-6 are not blown up.
_NORM_EPS_SQ = 1e-12


def l2_normalize(z: jax.Array) -> jax.Array:
    """z: [n, d] -> float32 [n, d] with unit rows (zero rows stay zero; finite grads)."""
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _NORM_EPS_SQ))


class TwoTower(nn.Module):
    """``(image [B,H,W,C] f32 | None, text i32 [B,L] | None) -> (zimg, ztxt, {"t", "b"})``.

    ``image`` / ``text``: keyword arguments of :class:`ViT` / :class:`TextTransformer`
    (e.g. ``{"variant": "B/16", "pool": "map"}``). Each tower gets ``num_classes =
    embed_dim`` (its ``head``) and the model's ``dtype`` unless its dict sets them; a
    tower with ``num_classes: None`` must have ``width == embed_dim`` (as SigLIP's image
    tower). ``zimg``, ``ztxt``: float32 ``[B, embed_dim]``, L2-normalised, or None when
    that input is None. ``t`` (log-temperature, init ``t_init``) and ``b`` (bias, init
    ``b_init``) are float32 scalars. Initialise with both inputs so both towers exist.
    """

    image: Mapping[str, Any] | None = None
    text: Mapping[str, Any] | None = None
    embed_dim: int = 128
    t_init: float = math.log(10.0)
    b_init: float = -10.0
    dtype: Any = "float32"

    def _tower_kwargs(self, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"num_classes": self.embed_dim, "dtype": self.dtype, **(kwargs or {})}

    def _check_dim(self, tower: str, z: jax.Array) -> None:
        if z.shape[-1] != self.embed_dim:
            raise ValueError(
                f"TwoTower.{tower}: tower output has dim {z.shape[-1]} but embed_dim is "
                f"{self.embed_dim} (set {tower}.num_classes or its width)"
            )

    @nn.compact
    def __call__(
        self,
        image: jax.Array | None = None,
        text: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> tuple[jax.Array | None, jax.Array | None, dict[str, jax.Array]]:
        zimg = ztxt = None
        if image is not None:
            zimg = ViT(**self._tower_kwargs(self.image), name="img")(image, train=train)
            self._check_dim("image", zimg)
            zimg = l2_normalize(zimg)
        if text is not None:
            ztxt = TextTransformer(**self._tower_kwargs(self.text), name="txt")(text, train=train)
            self._check_dim("text", ztxt)
            ztxt = l2_normalize(ztxt)
        t = self.param("t", nn.initializers.constant(self.t_init), (), jnp.float32)
        b = self.param("b", nn.initializers.constant(self.b_init), (), jnp.float32)
        return zimg, ztxt, {"t": t, "b": b}
