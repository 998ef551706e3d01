"""NaFlex training and eval inputs (SigLIP 2, arXiv 2502.14786): one switch,
``config.model.towers.<m>.naflex_max_patches = N`` on an image ("vit") tower.

With it set, the pipelines (training and every eval) read that modality with a
:class:`NaFlexProcessor` instead of the fixed-size image processor:

1. reader threads: decode, the ``data.pp_train`` / ``pp_eval`` geometric ops (no
   fixed-size op is needed; ``random_aspect_crop`` gives square sources mixed aspect
   ratios), then a resize keeping the aspect ratio to the largest size whose sides are
   multiples of the patch p with at most N patches (:func:`.naflex.size_for_max_patches`,
   transformers' rule; PIL's bilinear filter, antialiased when shrinking);
2. collate: patches flattened as (row, col, channel) and padded to N
   (:func:`.naflex.batch_patches`, uint8);
3. finish: the spec's value op on the patches (padding stays zero).

The batch entry is then the dict the ViT takes (``models/vit.py``)::

    {"patches": f32 [b, N, p*p*3], "mask": bool [b, N], "spatial_shapes": i32 [b, 2]}

Its shapes never depend on the images, so the train step (and each eval's embedding
function) compiles once for every mix of aspect ratios. The dict's arrays are sharded
on the batch axes like any input (``sharding.to_global``), micro-batched by GradCache
like any input, and padded by the evals with copies of a real row
(:mod:`multimodal_ssl.data.rows`). The tower's learned position grid is
``naflex_positions`` (default: the largest square grid of at most N positions),
resized to each image's patch grid. Self-distillation (``config.distill``) and
``token_drop`` take fixed-grid images and are refused on a NaFlex tower.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from multimodal_ssl.data import naflex
from multimodal_ssl.data.modalities import ImageProcessor


class NaFlexProcessor(ImageProcessor):
    """Images -> NaFlex dicts of ``max_patches`` patches of ``patch`` x ``patch`` pixels
    (module doc). ``spec``: a pp spec (:mod:`.preprocess`) whose geometric ops run before
    the patch-budget resize and whose value op runs on the patches."""

    def __init__(
        self, modality: str, field: str | None, spec: str, image_size: int, *,
        patch: int, max_patches: int,
    ):
        super().__init__(modality, field, spec, image_size)
        self.patch, self.max_patches = patch, max_patches

    def read(self, value, where, rng) -> np.ndarray:
        """-> uint8 [h, w, 3] with h, w multiples of the patch, (h/p)*(w/p) <= N."""
        image = self._decode(value, where)
        for op in self.preprocess.ops:
            image = op(image, rng)
        h0, w0 = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
        h, w = naflex.size_for_max_patches(h0, w0, self.patch, self.max_patches)
        if (h, w) != (h0, w0):
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            image = image.resize((w, h), Image.BILINEAR)
        return np.asarray(image)[..., : self.channels]

    def absent(self) -> np.ndarray:
        """A missing field: one zero patch (a 1 x 1 grid; masked out of the objective)."""
        return np.zeros((self.patch, self.patch, self.channels), np.uint8)

    def collate(self, values) -> dict[str, dict[str, np.ndarray]]:
        return {
            self.modality: naflex.batch_patches(
                list(values), self.patch, self.max_patches, dtype=np.uint8
            )
        }

    def finish(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 patches -> f32 through the value op; padded patches stay 0."""
        patches = batch["patches"]
        b, n, features = patches.shape
        out = self.preprocess.normalize(patches.reshape(b, n * features // 3, 3))
        out = out.reshape(b, n, features)
        out[~batch["mask"]] = 0.0
        return {**batch, "patches": out}

    def example_shape(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape, dtype)}`` of one example's NaFlex dict."""
        n = self.max_patches
        return {
            "patches": ((n, self.patch * self.patch * self.channels), np.dtype(np.float32)),
            "mask": ((n,), np.dtype(bool)),
            "spatial_shapes": ((2,), np.dtype(np.int32)),
        }

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:naflex={self.max_patches}x{self.patch}"


def naflex_settings(config: Any, modality: str, tower: Any) -> tuple[int, int] | None:
    """``(patch, max_patches)`` of ``config.model.towers.<modality>`` (``tower``) when its
    ``naflex_max_patches`` is set, else None. ValueError (message without the key: the
    caller names ``config.model.towers.<m>.naflex_max_patches``) for a bad budget, a
    non-square patch, or self-distillation / token dropping on this tower."""
    max_patches = tower.get("naflex_max_patches")
    if max_patches is None:
        return None
    if not isinstance(max_patches, int) or isinstance(max_patches, bool) or max_patches < 1:
        raise ValueError(f"must be an int >= 1 (patches per image), got {max_patches!r}")
    from multimodal_ssl import distill  # local: imports jax; grain workers never call this
    from multimodal_ssl.models.towers import tower_class

    if tower["type"] != "vit":
        raise ValueError(f"NaFlex inputs need a 'vit' tower, not {tower['type']!r}")
    module = tower_class("vit")(**{k: v for k, v in tower.items() if k != "type"})
    patch = module.sizes()["patch_size"]
    if patch[0] != patch[1]:
        raise ValueError(f"NaFlex needs square patches, got {patch}")
    if distill.enabled(config) and config.distill.modality == modality:
        raise ValueError(
            "self-distillation takes fixed-size images; set config.distill.local_weight = "
            "masked_weight = 0 (or naflex_max_patches = None)"
        )
    if tower.get("posemb", "learn") != "learn":
        raise ValueError(f"NaFlex resizes a learned position grid; set {modality}'s posemb='learn'")
    if tower.get("token_drop"):
        raise ValueError(f"token_drop is not supported on NaFlex inputs; set {modality}'s to 0")
    return patch[0], max_patches
