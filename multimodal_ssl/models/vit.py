"""Vision Transformer (Dosovitskiy et al., 2021) as used by SigLIP / big_vision.

Param tree (big_vision names): ``embedding/{kernel [p, p, C, d], bias}``,
``pos_embedding [1, h*w, d]`` (posemb "learn"), ``cls [1, 1, d]`` (pool "tok"),
``Transformer/{encoderblock_{i}, encoder_norm}``, ``MAPHead_0`` (pool "map"),
``head/{kernel, bias}`` (when ``num_classes``).

NaFlex inputs (SigLIP 2, arXiv 2502.14786): instead of an image array, a dict of
``patches`` f32 [b, N, p*p*C] (each patch flattened as (row, col, channel)), ``mask``
bool [b, N] (False: padding) and ``spatial_shapes`` int [b, 2] (each image's patch rows
and columns, ``h * w`` = its number of real patches, which come first, row-major). The
patches go through the same ``embedding``; the learned ``pos_embedding`` (a square grid
of ``naflex_positions``) is resized to each image's (h, w) (:mod:`models.naflex`);
attention and pooling skip the padding. N is static, image sizes are not: one compiled
function serves every size up to N patches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from multimodal_ssl.models.common import (
    compute_dtype,
    encode_and_pool,
    posemb_sincos2d,
)
from multimodal_ssl.models.naflex import resize_posemb
from multimodal_ssl.models.variants import resolve_sizes

POOLS = ("map", "gap", "tok")
POSEMBS = ("learn", "sincos2d")


class ViT(nn.Module):
    """images [b, H, W, C] float -> [b, num_classes or width] float32.

    Sizes come from ``variant`` (e.g. ``"B/16"``, ``"mu/4"``, case-insensitive) and are
    replaced by any of ``width``, ``depth``, ``mlp_dim``, ``num_heads``, ``patch_size``
    that is set. ``pool``: ``"map"`` (attention pooling), ``"gap"`` (token mean) or
    ``"tok"`` (a prepended learned class token). ``num_classes=None``: no ``head``.
    ``dtype``: compute dtype ("float32" | "bfloat16"); params are float32.
    ``dropout > 0`` applies only with ``train=True``, which then needs a "dropout" rng.
    ``scan``/``remat``: of the :class:`Encoder` (scanned layers, rematerialisation policy).
    ``stochastic_depth``: the :class:`Encoder`'s drop-path rate (of its last block; linear
    over depth). ``token_drop`` r in [0, 1) (FLIP, arXiv 2212.00794): with ``train=True``
    each example keeps a random ``max(1, round(L * (1 - r)))`` of its L patch tokens
    (after the position embedding, before the class token), so the encoder runs on the
    shorter sequence; ``train=False`` uses all tokens. Both draw on the "dropout" rng.
    ``naflex_positions``: size of the learned position grid (a square number) when the
    inputs are NaFlex dicts (module doc); needs ``posemb="learn"``, no ``token_drop``.
    Image arrays then need ``sqrt(naflex_positions)`` patches a side.
    ``naflex_max_patches`` N: the data pipelines give this tower NaFlex dicts of N
    patches (``data/naflex_pp.py``); ``naflex_positions`` then defaults to the largest
    square number <= N.

    Call options (self-distillation, ``multimodal_ssl/distill.py``; no params of their
    own): ``patch_mask`` bool [b, h*w] with ``mask_token`` [width]: the embeddings of the
    True patches are replaced by ``mask_token`` (before the position embedding, iBOT);
    ``return_tokens=True``: returns ``(output, patch_tokens [b, h*w, width])``, the
    encoder's output at the patch positions (class token left out).
    """

    variant: str | None = None
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    patch_size: int | Sequence[int] | None = None
    posemb: str = "learn"
    pool: str = "map"
    num_classes: int | None = None
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = "float32"
    scan: bool = False
    remat: str = "none"
    stochastic_depth: float = 0.0
    token_drop: float = 0.0
    naflex_positions: int | None = None
    naflex_max_patches: int | None = None

    def sizes(self) -> dict[str, Any]:
        """Resolved ``width, depth, mlp_dim, num_heads`` and ``patch_size`` (a pair)."""
        patch = self.patch_size
        if isinstance(patch, int):
            patch = (patch, patch)
        sizes = resolve_sizes(
            "ViT",
            self.variant,
            {
                "width": self.width,
                "depth": self.depth,
                "mlp_dim": self.mlp_dim,
                "num_heads": self.num_heads,
                "patch_size": None if patch is None else tuple(patch),
            },
            with_patch=True,
        )
        if len(sizes["patch_size"]) != 2:
            raise ValueError(f"ViT.patch_size: expected an int or a pair, got {self.patch_size!r}")
        return sizes

    @nn.compact
    def __call__(
        self,
        image: jnp.ndarray | Mapping[str, jnp.ndarray],
        *,
        train: bool = False,
        patch_mask: jnp.ndarray | None = None,
        mask_token: jnp.ndarray | None = None,
        return_tokens: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        if self.pool not in POOLS:
            raise ValueError(f"ViT.pool: {self.pool!r} is not one of {list(POOLS)}")
        if self.posemb not in POSEMBS:
            raise ValueError(f"ViT.posemb: {self.posemb!r} is not one of {list(POSEMBS)}")
        if not 0 <= self.token_drop < 1:
            raise ValueError(f"ViT.token_drop: must be in [0, 1), got {self.token_drop!r}")
        sizes = self.sizes()
        dtype = compute_dtype(self.dtype)
        width, patch = sizes["width"], sizes["patch_size"]
        if isinstance(image, Mapping):
            if patch_mask is not None or return_tokens:
                raise ValueError("ViT: patch_mask / return_tokens do not take NaFlex inputs")
            x, mask = self._naflex_tokens(image, width, patch, dtype, train)
            return encode_and_pool(
                self, x, sizes, dtype, train=train, name="Transformer", mask=mask
            )
        if image.ndim != 4 or image.shape[1] % patch[0] or image.shape[2] % patch[1]:
            raise ValueError(
                f"ViT: image must be [b, H, W, C] with H, W divisible by patch {patch}, "
                f"got shape {image.shape}"
            )

        x = nn.Conv(width, patch, strides=patch, padding="VALID", dtype=dtype, name="embedding")(
            image.astype(dtype)
        )
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, width)
        if patch_mask is not None:
            if patch_mask.shape != (b, h * w) or mask_token is None:
                raise ValueError(
                    f"ViT.patch_mask: expected bool [{b}, {h * w}] and a mask_token "
                    f"[{width}], got {patch_mask.shape} and {mask_token is not None}"
                )
            x = jnp.where(patch_mask[:, :, None], mask_token.astype(dtype), x)
        if self.posemb == "learn":
            pos = self.param(
                "pos_embedding",
                nn.initializers.normal(stddev=1 / np.sqrt(width)),
                (1, h * w, width),
                jnp.float32,
            )
        else:
            pos = posemb_sincos2d(h, w, width)
        x = x + pos.astype(dtype)  # before the class token, which has no position
        if train and self.token_drop > 0:
            if return_tokens:
                raise ValueError("ViT.token_drop: patch tokens cannot be returned with it on")
            x = self._drop_tokens(x)
        if self.pool == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, width)), x], axis=1)
        x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)

        out = encode_and_pool(
            self, x, sizes, dtype, train=train, name="Transformer", return_tokens=return_tokens
        )
        if return_tokens:
            pooled, tokens = out
            return pooled, tokens[:, 1:] if self.pool == "tok" else tokens
        return out

    def _naflex_tokens(
        self, inputs: Mapping[str, jnp.ndarray], width: int, patch: tuple, dtype, train: bool
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """NaFlex dict (module doc) -> (tokens [b, N (+1 class token), d], mask [b, N (+1)])."""
        patches, mask, shapes = (inputs.get(k) for k in ("patches", "mask", "spatial_shapes"))
        if patches is None or mask is None or shapes is None:
            raise ValueError(
                f"ViT: NaFlex inputs need patches, mask and spatial_shapes, got {sorted(inputs)}"
            )
        b, n, features = patches.shape if patches.ndim == 3 else (0, 0, 0)
        channels = features // (patch[0] * patch[1])
        if (
            patches.ndim != 3
            or channels * patch[0] * patch[1] != features
            or mask.shape != (b, n)
            or shapes.shape != (b, 2)
        ):
            raise ValueError(
                f"ViT: NaFlex inputs must be patches [b, N, {patch[0]}*{patch[1]}*C], mask "
                f"[b, N], spatial_shapes [b, 2], got {patches.shape}, {mask.shape}, {shapes.shape}"
            )
        positions = self.naflex_positions
        if positions is None and self.naflex_max_patches:
            positions = math.isqrt(self.naflex_max_patches) ** 2
        if self.posemb != "learn" or not positions:
            raise ValueError("ViT.naflex_positions: NaFlex inputs need it set and posemb='learn'")
        if train and self.token_drop > 0:
            raise ValueError("ViT.token_drop: not supported with NaFlex inputs")
        x = nn.Conv(width, patch, strides=patch, padding="VALID", dtype=dtype, name="embedding")(
            patches.reshape(b * n, *patch, channels).astype(dtype)
        ).reshape(b, n, width)
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=1 / np.sqrt(width)),
            (1, positions, width),
            jnp.float32,
        )
        x = x + resize_posemb(pos, shapes, n).astype(dtype)
        mask = mask.astype(bool)
        if self.pool == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, width)), x], axis=1)
            mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
        return nn.Dropout(rate=self.dropout)(x, deterministic=not train), mask

    def _drop_tokens(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [b, L, d] -> [b, n_keep, d]: a uniformly random subset per example (FLIP)."""
        b, length, _ = x.shape
        n_keep = max(1, round(length * (1 - self.token_drop)))
        noise = jax.random.uniform(self.make_rng("dropout"), (b, length))
        keep = jnp.argsort(noise, axis=1)[:, :n_keep]
        return jnp.take_along_axis(x, keep[:, :, None], axis=1)
