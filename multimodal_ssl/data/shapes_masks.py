"""Per-pixel object-class masks of ``generated:shapes`` scenes (the ``segmentation`` field).

A pixel's class is that of the nearest object covering at least half of it, exactly the
rule :func:`.shapes.render` uses for the depth map (so ``segmentation > 0`` where
``depth < BACKGROUND_DEPTH``), else 0 (background). Object classes are
``1 + shape_color_label(shape, colour)``: ``NUM_CLASSES = 1 + 4 * 6 = 25`` ids in all.
:func:`relabel` maps a mask to the shape-only (1 + 4) or colour-only (1 + 6) classes.
Computed only when a pipeline requests the field; the default record is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multimodal_ssl.data import shapes

BACKGROUND = 0
NUM_CLASSES = 1 + len(shapes.SHAPES) * len(shapes.COLORS)


def segmentation(scene: Sequence[shapes.SceneObject], image_size: int) -> np.ndarray:
    """The class mask of ``scene`` rendered at ``image_size`` -> int32 [S, S] in
    ``[0, NUM_CLASSES)`` (module docstring). The coverage is ``render``'s
    (:func:`.shapes.coverage`)."""
    mask = np.zeros((image_size, image_size), np.int32)
    for obj in sorted(scene, key=lambda o: -o.depth):  # far to near: the nearest wins
        covered = shapes.coverage(obj, image_size)
        if covered is not None:
            box, cover = covered
            mask[box][cover >= 0.5] = 1 + shapes.shape_color_label(obj.shape, obj.color)
    return mask


def classnames(kind: str = "shape_color") -> list[str]:
    """``["background", *shapes.classnames(kind)]``: the mask classes of :func:`relabel`."""
    return ["background", *shapes.classnames(kind)]


def relabel(mask: np.ndarray, kind: str = "shape_color") -> np.ndarray:
    """A ``segmentation`` mask (int [..., S, S], shape+colour ids) as ``kind`` ids:
    "shape_color" (unchanged), "shape" (1 + shape) or "color" (1 + colour); 0 stays 0."""
    mask = np.asarray(mask)
    if kind == "shape_color":
        return mask
    obj = mask - 1
    if kind == "shape":
        out = 1 + obj // len(shapes.COLORS)
    elif kind == "color":
        out = 1 + obj % len(shapes.COLORS)
    else:
        raise ValueError(f"kind: {kind!r} is not one of {list(shapes.CLASS_KINDS)}")
    return np.where(mask == BACKGROUND, BACKGROUND, out).astype(mask.dtype)
