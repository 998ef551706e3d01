"""Segmentation metrics and patch targets for the dense probe (``evals/dense_probe.py``);
pure numpy, no model.

* :func:`patch_targets`: a pixel mask cut into the ViT's patch grid, each patch labelled
  with the majority class of its pixels (equal counts: the lower class id).
* :func:`confusion` / :func:`miou`: the dataset-level confusion matrix and mean IoU as
  segmentation benchmarks compute it (mmsegmentation, VOC): ``IoU_c = TP / (TP + FP +
  FN)`` summed over every pixel (or patch) of the split, averaged over the classes with
  ``TP + FP + FN > 0``, i.e. present in the targets or the predictions (a class only
  predicted scores 0; one absent from both is left out). Background is a class.
* :func:`upsample`: patch predictions [n, h*w] -> pixel predictions [n, H, W] (nearest:
  every pixel takes its patch's class).
"""

from __future__ import annotations

import numpy as np


def _grid(height: int, width: int, num_patches: int) -> tuple[int, int, int]:
    """(patch side p, rows h, cols w) of square patches tiling [height, width] into
    ``num_patches``; ValueError if they do not."""
    p = round(float(np.sqrt(height * width / max(num_patches, 1))))
    if p < 1 or height % p or width % p or (height // p) * (width // p) != num_patches:
        raise ValueError(
            f"{num_patches} square patches do not tile a {height}x{width} mask "
            "(the dense probe needs square ViT patches dividing the image)"
        )
    return p, height // p, width // p


def patch_targets(masks: np.ndarray, num_patches: int, num_classes: int) -> np.ndarray:
    """masks: int [n, H, W] class ids in [0, num_classes) -> int32 [n, num_patches]: the
    majority class of each patch's pixels, patches row-major (the ViT's token order);
    equal counts go to the lower class id."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"masks: expected int [n, H, W], got {masks.dtype} {masks.shape}")
    if masks.size and (masks.min() < 0 or masks.max() >= num_classes):
        raise ValueError(f"masks: class ids must lie in [0, {num_classes})")
    n, height, width = masks.shape
    p, h, w = _grid(height, width, num_patches)
    cells = masks.reshape(n, h, p, w, p).transpose(0, 1, 3, 2, 4).reshape(n * h * w, p * p)
    flat = np.arange(n * h * w, dtype=np.int64)[:, None] * num_classes + cells
    counts = np.bincount(flat.reshape(-1), minlength=n * h * w * num_classes)
    return (
        np.argmax(counts.reshape(n * h * w, num_classes), axis=1).astype(np.int32).reshape(n, h * w)
    )


def upsample(preds: np.ndarray, height: int, width: int) -> np.ndarray:
    """preds: int [n, h*w] patch classes (row-major) -> [n, height, width] (nearest)."""
    preds = np.asarray(preds)
    p, h, w = _grid(height, width, preds.shape[1])
    grid = preds.reshape(len(preds), h, w)
    return np.repeat(np.repeat(grid, p, axis=1), p, axis=2)


def confusion(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """targets, preds: int arrays of one shape, ids in [0, C) -> int64 [C, C] counts,
    ``[target, prediction]``."""
    targets, preds = np.asarray(targets).reshape(-1), np.asarray(preds).reshape(-1)
    if targets.shape != preds.shape:
        raise ValueError(f"targets {targets.shape} and preds {preds.shape} differ in size")
    for key, a in (("targets", targets), ("preds", preds)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{key}: class ids must lie in [0, {num_classes})")
    flat = targets.astype(np.int64) * num_classes + preds
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """conf: [C, C] counts ``[target, prediction]`` -> (mean IoU over the classes with a
    non-empty union, IoU per class [C] f64 with NaN where the union is empty)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    iou = np.full(len(conf), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    if not np.any(union > 0):
        raise ValueError("conf: empty, no pixels to score")
    return float(np.nanmean(iou)), iou


def accuracy(conf: np.ndarray) -> float:
    """conf: [C, C] counts -> the fraction on the diagonal."""
    conf = np.asarray(conf)
    return float(np.trace(conf) / max(conf.sum(), 1))
