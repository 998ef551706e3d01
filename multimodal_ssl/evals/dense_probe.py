"""Dense linear probe: semantic segmentation from frozen ViT patch tokens (what SigLIP 2's
self-distillation and masked prediction improve; arXiv 2502.14786, Sec. 4.3).

The model is frozen; its ``query`` ViT tower (default image) gives the un-pooled patch
tokens [b, h*w, width]: the encoder's output after its final norm, without the class
token, pooling or head (``Embedder.patch_tokens``). Raw tokens rather than their
projection through the tower's head are what dense probes usually read (DINOv2, SigLIP
2), and the pooled head may discard spatial detail. Each patch's target is the majority
class of its pixels in the ``segmentation`` mask of the scene (``generated:shapes``:
:mod:`multimodal_ssl.data.shapes_masks`; ``classes`` picks shape+colour, 1 + 24 ids, or
shape / colour only; background is class 0).

The probe is the linear probe's multinomial logistic regression
(:func:`.linear_probe.fit_logistic_regression`, optax L-BFGS) on every patch of the
``max_train_examples`` train scenes, features standardised with the train patches' mean
and standard deviation. ``l2`` is chosen by cross-entropy on the patches of a held-out
``val_fraction`` of the train *scenes* (patches of one scene are not independent), then
refit on all of them. Test scenes are scored batch by batch (their tokens are never all
in memory):

* ``patch_miou``, ``patch_acc``: against the patch targets (what the probe is fit on);
* ``miou``, ``pixel_acc``: the patch predictions upsampled (nearest) to the pixels and
  compared with the full-resolution mask, as segmentation benchmarks score;
* ``l2``: the chosen penalty.

mIoU is dataset-level (``evals/segmentation.py``). Memory: the train tokens,
``max_train_examples * h*w * width`` f32 (512 scenes of 64 patches at width 128: 16 MiB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from multimodal_ssl.evals import common, linear_probe, segmentation

FIELD = "segmentation"  # the source field holding the int [S, S] class mask
CLASS_KINDS = ("shape_color", "shape", "color")
DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class PatchProbe:
    """A fitted probe: ``argmax(((x - mean) / std) @ w + b)``; mean, std [d], w [d, C],
    b [C] f32; ``l2`` its penalty."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: np.ndarray
    l2: float

    def predict(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: [n, L, d] float -> int32 [n, L] classes."""
        tokens = np.asarray(tokens, np.float32)
        n, length, d = tokens.shape
        x = (tokens.reshape(n * length, d) - self.mean) / self.std
        return np.argmax(x @ self.w + self.b, axis=1).astype(np.int32).reshape(n, length)


def fit_patch_probe(
    tokens: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_steps: int = 300,
) -> PatchProbe:
    """Fits the probe (module docstring) on every patch of N scenes.

    Args:
      tokens: [N, L, d] float patch features (N >= 2 scenes); targets: [N, L] int classes
        in [0, num_classes).
      l2_grid: candidate penalties, chosen by the cross-entropy on the patches of a
        ``seed``-ed ``val_fraction`` of the scenes (at least one); one value: no choice.
    Returns:
      the :class:`PatchProbe` refit on all N scenes with the chosen ``l2``.
    """
    tokens, targets = np.asarray(tokens, np.float32), np.asarray(targets)
    if tokens.ndim != 3 or targets.shape != tokens.shape[:2]:
        raise ValueError(
            f"tokens [N, L, d] and targets [N, L]: got {tokens.shape} and {targets.shape}"
        )
    n, length, d = tokens.shape
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction!r}")
    x = common.check_embeddings("tokens", tokens.reshape(n * length, d))
    y = targets.reshape(n * length).astype(np.int64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    x = (x - mean) / std
    grid = sorted(float(v) for v in l2_grid)
    best = 0
    if len(grid) > 1:
        n_val = max(1, round(val_fraction * n))
        if n_val >= n:
            raise ValueError(f"tokens: {n} scenes leave nothing to fit after validation")
        scenes = np.random.default_rng(seed).permutation(n)
        patches = np.arange(length)
        val = (scenes[:n_val, None] * length + patches).reshape(-1)
        fit = (scenes[n_val:, None] * length + patches).reshape(-1)
        w, b = linear_probe.fit_logistic_regression(
            x, y, num_classes, grid, rows=fit, max_steps=max_steps
        )
        logits = np.einsum("nd,gdc->gnc", x[val].astype(np.float64), w) + b[:, None, :]
        log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        ce = -np.mean(np.take_along_axis(log_probs, y[val][None, :, None], axis=-1), axis=(1, 2))
        best = len(grid) - 1 - int(np.argmin(ce[::-1]))  # ties: the larger l2
    w, b = linear_probe.fit_logistic_regression(
        x, y, num_classes, [grid[best]], max_steps=max_steps
    )
    return PatchProbe(mean, std, w[0], b[0], grid[best])


class SegmentationScores:
    """Accumulates the patch- and pixel-level confusion matrices over test batches."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.patch = np.zeros((num_classes, num_classes), np.int64)
        self.pixel = np.zeros((num_classes, num_classes), np.int64)

    def add(self, preds: np.ndarray, masks: np.ndarray) -> None:
        """preds: int [b, L] patch classes; masks: int [b, H, W] pixel classes."""
        c = self.num_classes
        self.patch += segmentation.confusion(
            segmentation.patch_targets(masks, preds.shape[1], c), preds, c
        )
        self.pixel += segmentation.confusion(
            masks, segmentation.upsample(preds, *masks.shape[1:]), c
        )

    def metrics(self) -> dict[str, float]:
        """{"miou", "pixel_acc", "patch_miou", "patch_acc"}."""
        return {
            "miou": segmentation.miou(self.pixel)[0],
            "pixel_acc": segmentation.accuracy(self.pixel),
            "patch_miou": segmentation.miou(self.patch)[0],
            "patch_acc": segmentation.accuracy(self.patch),
        }


def dense_probe_metrics(
    train_tokens: np.ndarray,
    train_masks: np.ndarray,
    test_tokens: np.ndarray,
    test_masks: np.ndarray,
    num_classes: int,
    **fit_kwargs: Any,
) -> dict[str, float]:
    """The dense probe on in-memory arrays: tokens [N, L, d] / [M, L, d] float, masks
    [N, H, W] / [M, H, W] int class ids -> {"miou", "pixel_acc", "patch_miou",
    "patch_acc", "l2"}; ``fit_kwargs``: those of :func:`fit_patch_probe`."""
    targets = segmentation.patch_targets(train_masks, np.shape(train_tokens)[1], num_classes)
    probe = fit_patch_probe(train_tokens, targets, num_classes, **fit_kwargs)
    scores = SegmentationScores(num_classes)
    scores.add(probe.predict(test_tokens), np.asarray(test_masks))
    return {**scores.metrics(), "l2": probe.l2}


class DenseProbeEvaluator(linear_probe.LinearProbeEvaluator):
    """The dense probe (module docstring) fit on the ``train_data`` scenes and scored on
    the ``data`` scenes; both need the ``segmentation`` field (``generated:shapes``) and
    an eval preprocessing that keeps the image geometry (the default resize / centre
    crop of an image already at ``data.image_size``). Keys (besides the common ones):
    ``train_data``, ``max_train_examples`` (512), ``classes`` ("shape_color", "shape",
    "color"), ``l2_grid``, ``val_fraction`` (0.2, of the train scenes), ``max_steps``;
    ``dims`` is not supported. Metrics: ``eval/<name>/{miou, pixel_acc, patch_miou,
    patch_acc, l2}``."""

    TYPE = "dense_probe"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.max_train_examples = 512  # x the patches per scene (64 at 64 px, patch 8)
        cfg.l2_grid = DEFAULT_L2_GRID
        cfg.classes = "shape_color"
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        if cfg["classes"] not in CLASS_KINDS:
            raise ValueError(
                f"evals.{name}.classes: {cfg['classes']!r} is not one of {list(CLASS_KINDS)}"
            )
        if cfg["dims"] is not None:
            raise ValueError(f"evals.{name}.dims: not supported by the dense probe, must be None")

    def setup(self) -> None:
        from multimodal_ssl.data import shapes_masks  # local: config validation stays light

        super().setup()
        self.kind = self.config["classes"]
        self.classnames = shapes_masks.classnames(self.kind)
        self._mask_sources = {
            "train": self._open_masks("train_data"),
            "test": self._open_masks("data"),
        }
        self._masks: dict[str, dict[int, np.ndarray]] = {"train": {}, "test": {}}

    def _open_masks(self, key: str):
        """The source of ``config[key]`` read for its ``segmentation`` field only."""
        from multimodal_ssl.data.fields import FieldRequest
        from multimodal_ssl.data.sources import DataOptions

        spec = self.config[key]
        kwargs = dict(self._source_args)
        kwargs["source_kwargs"] = dataclasses.replace(
            DataOptions.coerce(kwargs["source_kwargs"]),
            requests=(FieldRequest(FIELD, None, False),),
        )
        source = common.open_eval_source(spec, **kwargs)
        if FIELD not in (getattr(source, "provides", None) or ()):
            raise ValueError(
                f"config.evals.{self.name}.{key}: {spec!r} has no {FIELD!r} masks "
                "(generated:shapes has)"
            )
        return source

    def masks(self, split: str, ids: np.ndarray) -> np.ndarray:
        """uint8 [b, S, S] class masks (``classes`` ids) of examples ``ids`` of ``split``
        ("train" or "test"); rendered once, then kept."""
        from multimodal_ssl.data import shapes_masks

        cache, source = self._masks[split], self._mask_sources[split]
        out = []
        for i in np.asarray(ids).tolist():
            if i not in cache:
                mask = shapes_masks.relabel(source[i][FIELD], self.kind)
                cache[i] = np.asarray(mask, np.uint8)
            out.append(cache[i])
        return np.stack(out)

    def _tokens_and_masks(
        self, data: common.EvalData, split: str, tokens_fn
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(tokens f32 [b, L, d], masks uint8 [b, S, S]) of every batch of ``data``."""
        q = self.config["query"]
        for batch in data.batches():
            images = np.asarray(batch[q])
            tokens = np.asarray(tokens_fn(images), np.float32)
            masks = self.masks(split, batch["id"])
            if tokens.ndim != 3 or len(tokens) != len(images):
                raise ValueError(
                    f"patch tokens: expected [{len(images)}, L, d], got {tokens.shape}"
                )
            if masks.shape[1:] != images.shape[1:3]:
                raise ValueError(
                    f"config.evals.{self.name}: {q} inputs are {images.shape[1:3]} but the "
                    f"masks {masks.shape[1:]}; the eval preprocessing must keep the geometry"
                )
            yield tokens, masks

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        q = self.config["query"]
        tokens_fn = getattr(embed[q], "patch_tokens", None)
        if tokens_fn is None:
            raise ValueError(
                f"config.evals.{self.name}: the {q!r} encoder gives no patch tokens (the "
                "trainer's and a checkpoint's ViT towers do; imported encoders do not)"
            )
        c = len(self.classnames)
        train_tokens, train_targets = [], []
        for tokens, masks in self._tokens_and_masks(self.train_data, "train", tokens_fn):
            train_tokens.append(tokens)
            train_targets.append(segmentation.patch_targets(masks, tokens.shape[1], c))
        if not train_tokens:
            raise ValueError(f"config.evals.{self.name}.train_data: no examples")
        probe = fit_patch_probe(
            np.concatenate(train_tokens),
            np.concatenate(train_targets),
            c,
            l2_grid=tuple(self.config["l2_grid"]),
            val_fraction=self.config["val_fraction"],
            seed=self.seed,
            max_steps=self.config["max_steps"],
        )
        del train_tokens
        scores = SegmentationScores(c)
        for tokens, masks in self._tokens_and_masks(self.data, "test", tokens_fn):
            scores.add(probe.predict(tokens), masks)
        return self._prefixed({**scores.metrics(), "l2": probe.l2})
