"""Host-side NaFlex (SigLIP 2) inputs: the patch budget's image size, the antialiased
resize, and images -> padded patch sequences with a mask and the patch grid shapes.

Follows transformers' ``Siglip2ImageProcessor``: an image is resized (aspect ratio kept)
to the largest size whose sides are multiples of the patch and whose patch count is at
most ``max_num_patches`` (:func:`size_for_max_patches`), cut into patches flattened as
``(row, col, channel)``, and padded with zero patches to ``max_num_patches``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from multimodal_ssl.models.naflex import antialias_weights


def size_for_max_patches(
    height: int, width: int, patch: int, max_num_patches: int, eps: float = 1e-5
) -> tuple[int, int]:
    """(height, width) -> the resized (h, w): multiples of ``patch``, at least one patch,
    ``(h/patch) * (w/patch) <= max_num_patches``; the largest scale found by transformers'
    binary search (``get_image_size_for_max_num_patches``), so sizes agree exactly."""

    def scaled(scale: float, size: int) -> int:
        return max(patch, math.ceil(size * scale / patch) * patch)

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch) * (scaled(mid, width) / patch) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """image: float [H, W, C] -> f32 [height, width, C], antialiased bilinear (as
    ``F.interpolate(..., mode="bilinear", align_corners=False, antialias=True)``)."""
    rows = antialias_weights(image.shape[0], height, np.arange(height), np)
    cols = antialias_weights(image.shape[1], width, np.arange(width), np)
    image = image.astype(np.float32)
    return np.einsum("ia,jb,abc->ijc", rows, cols, image, optimize=True).astype(np.float32)


def check_images(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """A list (or [N, H, W, 3] array) of float [H, W, 3] images -> list of f32 arrays;
    ValueError naming the index and shape of a bad one."""
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
            raise ValueError(
                f"images[{i}]: expected float [H, W, 3], got {image.dtype}{image.shape}"
            )
        out.append(image.astype(np.float32))
    return out


def fits(image: np.ndarray, patch: int, max_num_patches: int) -> bool:
    """True if ``image`` [H, W, C] is used as it is: sides multiples of ``patch`` and
    at most ``max_num_patches`` patches."""
    h, w = image.shape[:2]
    return h % patch == 0 and w % patch == 0 and (h // patch) * (w // patch) <= max_num_patches


def resize_for_patches(image: np.ndarray, patch: int, max_num_patches: int) -> np.ndarray:
    """image [H, W, C] -> [h, w, C] at :func:`size_for_max_patches` (what transformers'
    processor feeds the model; unchanged if already that size)."""
    h, w = size_for_max_patches(image.shape[0], image.shape[1], patch, max_num_patches)
    return image if (h, w) == image.shape[:2] else resize_image(image, h, w)


def patchify(image: np.ndarray, patch: int) -> np.ndarray:
    """image [h*p, w*p, C] -> [h*w, p*p*C]: row-major patches, each flattened as
    (row, col, channel) like transformers' ``convert_image_to_patches``."""
    hp, wp, c = image.shape
    x = image.reshape(hp // patch, patch, wp // patch, patch, c).transpose(0, 2, 1, 3, 4)
    return x.reshape((hp // patch) * (wp // patch), patch * patch * c)


def batch_patches(
    images: Sequence[np.ndarray],
    patch: int,
    max_num_patches: int,
    batch: int | None = None,
    dtype: np.dtype | type = np.float32,
) -> dict[str, np.ndarray]:
    """Images that :func:`fits` -> ``{"patches": dtype [B, N, p*p*C], "mask": bool [B, N],
    "spatial_shapes": i32 [B, 2]}`` with N = ``max_num_patches`` and B = ``batch`` (default
    ``len(images)``); padded patches are zeros with mask False, padded images one zero
    patch on a 1 x 1 grid (their embeddings are meaningless). ``dtype``: of the patches
    (uint8 in the training pipeline, which normalises whole batches later)."""
    b = len(images) if batch is None else batch
    c = images[0].shape[-1] if images else 3
    out = {
        "patches": np.zeros((b, max_num_patches, patch * patch * c), dtype),
        "mask": np.zeros((b, max_num_patches), bool),
        "spatial_shapes": np.ones((b, 2), np.int32),
    }
    out["mask"][:, 0] = True
    for i, image in enumerate(images):
        if not fits(image, patch, max_num_patches):
            raise ValueError(
                f"images[{i}]: shape {image.shape} is not a grid of {patch}x{patch} patches "
                f"with at most {max_num_patches} patches; resize it first"
            )
        seq = patchify(image, patch)
        out["patches"][i, : len(seq)] = seq
        out["mask"][i, : len(seq)] = True
        out["mask"][i, len(seq) :] = False
        out["spatial_shapes"][i] = (image.shape[0] // patch, image.shape[1] // patch)
    return out
