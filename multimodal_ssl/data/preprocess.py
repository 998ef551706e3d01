"""Image preprocessing from a config string (``data.pp_train`` / ``data.pp_eval``).

A spec is ops joined by ``|``, each ``name`` or ``name(args)`` with Python literal
arguments, e.g. ``"random_resized_crop(0.5)|flip_lr|value_range(-1, 1)"``. Sizes
default to ``data.image_size`` (S).

Geometric ops, per example on the decoded uint8 [H, W, 3] image, in order:
  ``resize(size=S, method="bilinear")``       squash to [size, size]
  ``resize_small(size=S, method="bilinear")`` shorter side to size, aspect kept
  ``center_crop(size=S)``                     central [size, size] crop
  ``random_crop(size=S)``                     uniformly placed [size, size] crop
  ``random_resized_crop(min_scale=0.08, max_scale=1.0, min_ratio=3/4, max_ratio=4/3,
  size=S, method="bilinear")``                Inception-style crop (area fraction and
                                              aspect ratio drawn at random), resized
  ``flip_lr(p=0.5)``                          left-right flip with probability p
  ``random_aspect_crop(min_ratio=0.5, max_ratio=2.0)``  the largest crop of a width /
                                              height ratio drawn log-uniformly from the
                                              range, placed at random; not resized (for
                                              NaFlex towers, ``data/naflex_pp.py``, whose
                                              images keep their aspect ratio)
Value op, exactly one, last, applied to whole uint8 batches -> float32:
  ``value_range(vmin=-1, vmax=1)``            [0, 255] -> [vmin, vmax]
  ``normalize(mean, std)``                    (x / 255 - mean) / std per channel;
                                              ``normalize("clip")`` / ``("imagenet")``

Ops that find the image already at their output size do nothing, so the default
``"resize_small|center_crop|value_range(-1, 1)"`` costs nothing on sources that render
at S (``generated:shapes``) and makes any photo S x S. Random ops draw from the
per-example generator grain passes in (a function of seed, epoch and position), so
augmentation is reproducible and identical after a resume.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

Array = np.ndarray
_METHODS = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "area": Image.BOX,
    "lanczos": Image.LANCZOS,
}
NORMALIZE_PRESETS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _hw(image: Array | Image.Image) -> tuple[int, int]:
    return (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]


def _pil(image: Array | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(image)


def _crop(image: Array | Image.Image, top: int, left: int, h: int, w: int):
    if isinstance(image, Image.Image):
        return image.crop((left, top, left + w, top + h))
    return image[top : top + h, left : left + w]


def _check_size(size: Any) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    return size


def _check_method(method: Any) -> int:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is not one of {sorted(_METHODS)}")
    return _METHODS[method]


class Resize:
    def __init__(self, size: int, method: str = "bilinear"):
        self.size, self.resample = _check_size(size), _check_method(method)

    def __call__(self, image, rng):
        if _hw(image) == (self.size, self.size):
            return image
        return _pil(image).resize((self.size, self.size), self.resample)


class ResizeSmall:
    def __init__(self, size: int, method: str = "bilinear"):
        self.size, self.resample = _check_size(size), _check_method(method)

    def __call__(self, image, rng):
        h, w = _hw(image)
        if min(h, w) == self.size:
            return image
        scale = self.size / min(h, w)
        new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        return _pil(image).resize((new_w, new_h), self.resample)


class CenterCrop:
    def __init__(self, size: int):
        self.size = _check_size(size)

    def __call__(self, image, rng):
        h, w = _hw(image)
        if h < self.size or w < self.size:
            raise ValueError(
                f"center_crop({self.size}): image is only {h}x{w}; resize it first "
                f"(e.g. 'resize_small|center_crop')"
            )
        return _crop(image, (h - self.size) // 2, (w - self.size) // 2, self.size, self.size)


class RandomCrop:
    def __init__(self, size: int):
        self.size = _check_size(size)

    def __call__(self, image, rng):
        h, w = _hw(image)
        if h < self.size or w < self.size:
            raise ValueError(f"random_crop({self.size}): image is only {h}x{w}; resize it first")
        top = int(rng.integers(0, h - self.size + 1))
        left = int(rng.integers(0, w - self.size + 1))
        return _crop(image, top, left, self.size, self.size)


class RandomResizedCrop:
    """torchvision's / Inception's crop: 10 tries at a random area fraction in
    [min_scale, max_scale] and log-uniform aspect ratio in [min_ratio, max_ratio];
    if none fits, the largest central crop with a ratio in range."""

    def __init__(
        self,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        min_ratio: float = 3 / 4,
        max_ratio: float = 4 / 3,
        *,
        size: int,
        method: str = "bilinear",
    ):
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        if not 0 < min_ratio <= max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
        self.scale, self.ratio = (min_scale, max_scale), (min_ratio, max_ratio)
        self.size, self.resample = _check_size(size), _check_method(method)

    def box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, crop_h, crop_w) inside an h x w image."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        aspect = min(max(w / h, self.ratio[0]), self.ratio[1])
        cw, ch = (w, round(w / aspect)) if w / h <= aspect else (round(h * aspect), h)
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, image, rng):
        top, left, ch, cw = self.box(*_hw(image), rng)
        box = (left, top, left + cw, top + ch)
        return _pil(image).resize((self.size, self.size), self.resample, box=box)


class RandomAspectCrop:
    """[H, W, 3] -> the largest [h, w, 3] crop with ``w / h`` = r (rounded, >= 1 pixel),
    r log-uniform in [min_ratio, max_ratio], at a uniformly random position. Gives
    square sources (``generated:shapes``) mixed aspect ratios for NaFlex training."""

    def __init__(self, min_ratio: float = 0.5, max_ratio: float = 2.0):
        if not 0 < min_ratio <= max_ratio:
            raise ValueError(f"need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
        self.log_ratio = (math.log(min_ratio), math.log(max_ratio))

    def __call__(self, image, rng):
        h, w = _hw(image)
        ratio = math.exp(rng.uniform(*self.log_ratio))
        if ratio >= w / h:  # full width, shorter height
            ch, cw = max(1, min(h, round(w / ratio))), w
        else:
            ch, cw = h, max(1, min(w, round(h * ratio)))
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return _crop(image, top, left, ch, cw)


class FlipLR:
    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, image, rng):
        if rng.random() >= self.p:
            return image
        if isinstance(image, Image.Image):
            return image.transpose(Image.FLIP_LEFT_RIGHT)
        return image[:, ::-1]


class Affine:
    """uint8 [..., W, 3] -> float32 x * scale + offset per channel.

    In place on one float copy, with the per-channel factors tiled along whole rows: a
    length-3 broadcast would make numpy's inner loop 3 elements long (~8x slower)."""

    def __init__(self, scale: Any, offset: Any):
        self.scale = np.asarray(scale, np.float32).reshape(3)
        self.offset = np.asarray(offset, np.float32).reshape(3)

    def __call__(self, images: Array) -> Array:
        out = images.astype(np.float32)
        if np.all(self.scale == self.scale[0]) and np.all(self.offset == self.offset[0]):
            out *= self.scale[0]
            out += self.offset[0]
            return out
        rows = out.reshape(-1, out.shape[-2] * 3)
        rows *= np.tile(self.scale, out.shape[-2])
        rows += np.tile(self.offset, out.shape[-2])
        return out


def value_range(vmin: float = -1.0, vmax: float = 1.0) -> Affine:
    if not vmin < vmax:
        raise ValueError(f"need vmin < vmax, got {vmin}, {vmax}")
    return Affine([(vmax - vmin) / 255] * 3, [vmin] * 3)


def normalize(mean: Any, std: Any = None) -> Affine:
    if isinstance(mean, str):
        if mean not in NORMALIZE_PRESETS or std is not None:
            raise ValueError(f"preset {mean!r}: expected one of {sorted(NORMALIZE_PRESETS)} alone")
        mean, std = NORMALIZE_PRESETS[mean]
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
        raise ValueError(f"need 3 means and 3 positive stds (0..1 scale), got {mean}, {std}")
    return Affine(1 / (255 * std), -mean / std)


GEOMETRIC_OPS: dict[str, Callable[..., Any]] = {
    "resize": Resize,
    "resize_small": ResizeSmall,
    "center_crop": CenterCrop,
    "random_crop": RandomCrop,
    "random_resized_crop": RandomResizedCrop,
    "flip_lr": FlipLR,
    "random_aspect_crop": RandomAspectCrop,
}
VALUE_OPS: dict[str, Callable[..., Affine]] = {"value_range": value_range, "normalize": normalize}
_SIZED = ("resize", "resize_small", "center_crop", "random_crop", "random_resized_crop")


class Preprocess:
    """A parsed spec: ``preprocess(image, rng)`` runs the geometric ops on one uint8
    [H, W, 3] image (-> uint8 [h, w, 3]); ``preprocess.normalize(images)`` the value op on
    uint8 [..., 3] (-> float32). ``draft_size``: JPEG draft decoding size (when the first
    op only shrinks to a fixed size), else None."""

    def __init__(self, spec: str, image_size: int):
        self.spec, self.image_size = spec, image_size
        self.ops: list[Any] = []
        self.normalize: Affine | None = None
        self.draft_size: int | None = None
        for i, text in enumerate(t.strip() for t in spec.split("|")):
            name, args, kwargs = _parse_op(text, spec)
            if self.normalize is not None:
                raise ValueError(f"pp {spec!r}: the value op must be last, found {text!r} after it")
            if name in VALUE_OPS:
                self.normalize = _build(VALUE_OPS[name], name, args, kwargs, spec)
                continue
            if name not in GEOMETRIC_OPS:
                raise ValueError(
                    f"pp {spec!r}: unknown op {name!r}; known: {sorted(GEOMETRIC_OPS | VALUE_OPS)}"
                )
            gives_size = "size" in kwargs or (args and name != "random_resized_crop")
            if name in _SIZED and not gives_size:
                kwargs["size"] = image_size
            op = _build(GEOMETRIC_OPS[name], name, args, kwargs, spec)
            if i == 0 and name in ("resize", "resize_small"):
                self.draft_size = op.size
            self.ops.append(op)
        if self.normalize is None:
            raise ValueError(
                f"pp {spec!r}: must end with a value op ({' or '.join(sorted(VALUE_OPS))})"
            )

    def __call__(self, image: Array, rng: np.random.Generator) -> Array:
        for op in self.ops:
            image = op(image, rng)
        return np.asarray(image)

    def __repr__(self) -> str:
        return f"Preprocess({self.spec!r}, image_size={self.image_size})"


def _parse_op(text: str, spec: str) -> tuple[str, list[Any], dict[str, Any]]:
    try:
        node = ast.parse(text, mode="eval").body
        if isinstance(node, ast.Name):
            return node.id, [], {}
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError("expected name or name(literal args)")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        return node.func.id, args, kwargs
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"pp {spec!r}: cannot parse op {text!r} ({e})") from None


def _build(factory: Callable[..., Any], name: str, args: list, kwargs: dict, spec: str) -> Any:
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"pp {spec!r}: op {name}: {e}") from None
