"""Tower size variants in big_vision's naming (``"B/16"``, ``"So400m/14"``, ``"mu"``):
the table, its parser, and the resolution of a tower's sizes from a variant and explicit
overrides (each failure names the config key)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Size variants (width, depth, mlp_dim, num_heads) as in big_vision's vit.decode_variant,
# after Table 2 of https://arxiv.org/abs/2106.04560 ("So400m": arXiv 2305.13035).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}
SIZE_KEYS = ("width", "depth", "mlp_dim", "num_heads")


def _lookup_variant(name: str) -> tuple[int, int, int, int]:
    """Exact name first, then case-insensitive if unambiguous ("b" -> "B", but "g"/"G"
    are the distinct giant and gigantic sizes and must be spelled exactly)."""
    if name in VARIANTS:
        return VARIANTS[name]
    matches = [k for k in VARIANTS if k.lower() == name.lower()]
    if len(matches) == 1:
        return VARIANTS[matches[0]]
    raise ValueError(f"variant: unknown size {name!r}; valid sizes are {list(VARIANTS)}")


def parse_variant(variant: str, *, with_patch: bool) -> dict[str, Any]:
    """``"B/16"`` -> ``{"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
    "patch_size": (16, 16)}``; ``with_patch=False`` (text) rejects a ``/patch`` part."""
    match = re.fullmatch(r"([A-Za-z0-9]+)(?:/(\d+))?", variant.strip())
    if match is None:
        raise ValueError(
            f"variant: cannot parse {variant!r}; expected SIZE or SIZE/PATCH with SIZE in "
            f"{list(VARIANTS)}"
        )
    name, patch = match.groups()
    sizes: dict[str, Any] = dict(zip(SIZE_KEYS, _lookup_variant(name), strict=True))
    if patch is not None:
        if not with_patch:
            raise ValueError(f"variant: {variant!r} has a patch size, but this tower has none")
        sizes["patch_size"] = (int(patch), int(patch))
    return sizes


def resolve_sizes(
    owner: str, variant: str | None, overrides: Mapping[str, Any], *, with_patch: bool
) -> dict[str, Any]:
    """Sizes from ``variant``, replaced by every override that is not None.

    Raises ValueError naming ``owner.key`` for a size that neither sets.
    """
    sizes = parse_variant(variant, with_patch=with_patch) if variant else {}
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in overrides if k not in sizes]
    if missing:
        raise ValueError(
            f"{owner}: no value for {missing}; set them or a variant such as "
            f"{'mu/4' if with_patch else 'mu'}"
        )
    for key in SIZE_KEYS:
        if int(sizes[key]) < 1:
            raise ValueError(f"{owner}.{key}: must be >= 1, got {sizes[key]!r}")
    if sizes["width"] % sizes["num_heads"]:
        raise ValueError(
            f"{owner}.num_heads: width {sizes['width']} is not divisible by "
            f"num_heads {sizes['num_heads']}"
        )
    return sizes
