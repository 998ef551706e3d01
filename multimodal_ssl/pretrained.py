"""Pretrained two-tower encoders from imported SigLIP / SigLIP 2 weights, and tower
initialisation for training (``model.init_from``).

    from multimodal_ssl import pretrained
    enc = pretrained.load("/path/to/hf_siglip_dir")   # or a big_vision .npz
    zi = enc.embed_images(images)    # f32 [N, H, W, 3] in the model's range ([-1, 1])
    zt = enc.embed_texts(token_ids)  # int [N, L], L <= enc.max_text_len
    logits = enc.logits(zi, zt)      # [N_img, N_txt] = zi @ zt.T * exp(t) + b
    enc.t, enc.b                     # log-scale and bias (floats)

SigLIP 2 NaFlex (``Siglip2Model`` folders): ``embed_images`` takes a list of float
``[H, W, 3]`` images of any sizes; an image whose sides are multiples of the patch with
at most ``enc.max_num_patches`` patches is used as it is, others are first resized like
transformers' processor does (``enc.preprocess``). Every image is padded to
``max_num_patches`` patches with a mask, so one compiled function serves all sizes.

Embeddings are float32 numpy ``[N, d]``, L2-normalised, computed jitted with the batch
split over all devices (or the given mesh's batch axes). ``enc.params`` / ``enc.config``
are the converted params and the ``config.model`` sub-tree that builds the model, so a
training config can start from them (see :func:`init_from_config`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from multimodal_ssl.config import parse_init_towers, set_towers
from multimodal_ssl.convert import Checkpoint, check_params, checkpoint_tokenizer, load_checkpoint
from multimodal_ssl.data import naflex
from multimodal_ssl.data.tokenizers import Tokenizer
from multimodal_ssl.embedder import Embedder
from multimodal_ssl.models.layout import scan_layers
from multimodal_ssl.models.towers import build_model, param_name
from multimodal_ssl.sharding import make_mesh, replicated


class PretrainedEncoder:
    """Embeds images and token rows with a converted checkpoint (see module doc).

    Attributes: ``params`` (our image/text tree with ``t``, ``b``; f32 numpy), ``config``
    (``image``/``text`` tower kwargs, ``embed_dim``, ...), ``image_size`` (None for sin-cos
    position embeddings), ``max_text_len``, ``tokenizer`` (shipped with the checkpoint, or
    None), ``model`` (the MultiTower), ``max_num_patches`` (NaFlex checkpoints; else None).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        dtype: str = "float32",
        mesh: Mesh | None = None,
        tokenizer: Tokenizer | None = None,
        max_num_patches: int | None = None,
    ):
        self.params = checkpoint.params
        self.config = checkpoint.model
        self.image_size = checkpoint.image_size
        self.max_text_len = checkpoint.max_text_len
        self.source = checkpoint.source
        if max_num_patches is not None and not checkpoint.max_num_patches:
            raise ValueError(
                f"max_num_patches: {self.source} is not a NaFlex (SigLIP 2) checkpoint"
            )
        if max_num_patches is not None and max_num_patches < 1:
            raise ValueError(f"max_num_patches: must be >= 1, got {max_num_patches}")
        self.max_num_patches = max_num_patches or checkpoint.max_num_patches
        self.tokenizer = tokenizer
        self.model = checkpoint.build_model(dtype)
        mesh = mesh or make_mesh({"data": -1})
        self._embedder = Embedder(self.model, mesh)
        self._embedder.params = jax.device_put(self.params, replicated(mesh))  # once

    @property
    def t(self) -> float:
        """Log-scale of the logits (``logit_scale``)."""
        return float(self.params["t"])

    @property
    def b(self) -> float:
        """Bias of the logits (``logit_bias``)."""
        return float(self.params["b"])

    @property
    def patch_size(self) -> int:
        """Side of the image tower's (square) patches."""
        return int(np.broadcast_to(self.config.image.patch_size, (2,))[0])

    def preprocess(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """NaFlex: float [H, W, 3] images -> each resized (antialiased bilinear, aspect
        kept) to the size transformers' ``Siglip2ImageProcessor`` gives it for the
        patch budget (multiples of the patch, at most ``max_num_patches`` patches)."""
        self._require_naflex("preprocess")
        p, budget = self.patch_size, self.max_num_patches
        return [naflex.resize_for_patches(x, p, budget) for x in naflex.check_images(images)]

    def embed_images(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """images: float [N, S, S, 3] in the model's value range -> f32 [N, d], unit rows.
        NaFlex: a list of float [H, W, 3] of any sizes (module doc)."""
        if self.max_num_patches:
            return self._embed_naflex(images)
        images = np.asarray(images)
        side = self.image_size
        if (
            images.ndim != 4
            or images.shape[-1] != 3
            or (side is not None and images.shape[1:3] != (side, side))
        ):
            raise ValueError(
                f"images: expected float [N, {side or 'H'}, {side or 'W'}, 3] for {self.source}, "
                f"got {images.dtype}{images.shape}"
            )
        return self._embedder.embed_images(images.astype(np.float32))

    def _embed_naflex(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        p, budget = self.patch_size, self.max_num_patches
        images = [
            x if naflex.fits(x, p, budget) else naflex.resize_for_patches(x, p, budget)
            for x in naflex.check_images(images)
        ]
        batch = self._embedder.padded_size(len(images))
        inputs = naflex.batch_patches(images, p, budget, batch)
        return self._embedder.embed_naflex(inputs, len(images))

    def _require_naflex(self, what: str) -> None:
        if not self.max_num_patches:
            raise ValueError(f"{what}: {self.source} is not a NaFlex (SigLIP 2) checkpoint")

    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids: int [N, L] (L <= max_text_len, ids < vocab) -> f32 [N, d], unit rows."""
        tokens = np.asarray(token_ids)
        vocab = self.config.text.vocab_size
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token_ids: expected int [N, L], got {tokens.dtype}{tokens.shape}")
        if tokens.shape[1] > self.max_text_len or (
            tokens.size and (tokens.min() < 0 or tokens.max() >= vocab)
        ):
            raise ValueError(
                f"token_ids: need L <= {self.max_text_len} and ids in [0, {vocab}) for "
                f"{self.source}, got shape {tokens.shape}, ids {tokens.min()}..{tokens.max()}"
            )
        return self._embedder.embed_texts(tokens.astype(np.int32))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """texts -> int32 [N, max_text_len] with the checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source}: no tokenizer shipped with this checkpoint")
        return self.tokenizer.encode(texts)

    def logits(self, zimg: np.ndarray, ztxt: np.ndarray) -> np.ndarray:
        """zimg [N, d], ztxt [M, d] -> f32 [N, M] = ``zimg @ ztxt.T * exp(t) + b``
        (transformers' ``logits_per_image``)."""
        return (np.asarray(zimg) @ np.asarray(ztxt).T) * np.float32(np.exp(self.t)) + np.float32(
            self.b
        )


def load(
    path: str,
    *,
    dtype: str = "float32",
    mesh: Mesh | None = None,
    tokenizer: Tokenizer | None = None,
    max_num_patches: int | None = None,
) -> PretrainedEncoder:
    """Loads a transformers SigLIP / SigLIP 2 NaFlex folder or a big_vision ``.npz``.

    ``dtype``: compute dtype. ``mesh``: where to run (default: every device, batch
    split over them). ``tokenizer``: overrides the one found next to the weights
    (``spiece.model`` or ``tokenizer.json``; a ``.npz`` ships none).
    ``max_num_patches``: NaFlex patch budget per image (default: the checkpoint's).
    """
    checkpoint = load_checkpoint(path)
    if tokenizer is None:
        tokenizer = checkpoint_tokenizer(path, checkpoint.max_text_len)
    return PretrainedEncoder(
        checkpoint, dtype=dtype, mesh=mesh, tokenizer=tokenizer, max_num_patches=max_num_patches
    )


def init_from_config(
    config: ml_collections.ConfigDict, vocab_size: int
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Imported params for ``model.init_towers`` of the checkpoint ``model.init_from``.

    Returns ``(config, params)``: a copy of ``config`` whose initialised towers take
    their architecture from the checkpoint (``model.towers.image`` / ``.text`` replaced,
    ``model.embed_dim`` set to the checkpoint's), and ``{subtree: params}`` to put into
    the freshly initialised tree (``img``, ``txt``, ``t``, ``b``). Without
    ``model.init_from``: ``(config, {})``.
    Raises ValueError naming the config key when data sizes (``data.image_size``,
    ``data.max_text_len``) or the tokenizer's ``vocab_size`` do not fit the checkpoint.
    """
    if not config.model.init_from:
        return config, {}
    towers = parse_init_towers(config.model.init_towers)
    checkpoint = load_checkpoint(config.model.init_from)
    source = checkpoint.source
    config = config.copy_and_resolve_references()
    config.model.embed_dim = checkpoint.model.embed_dim
    new_towers = {m: config.model.towers[m] for m in config.model.towers}
    if "img" in towers:
        new_towers["image"] = {"type": "vit", **checkpoint.model.image.to_dict()}
        if checkpoint.image_size not in (None, config.data.image_size):
            raise ValueError(
                f"config.data.image_size: {config.data.image_size}, but the image tower of "
                f"{source} takes {checkpoint.image_size}x{checkpoint.image_size} images; "
                f"set it to {checkpoint.image_size}"
            )
    if "txt" in towers:
        new_towers["text"] = {"type": "text", **checkpoint.model.text.to_dict()}
        if config.data.max_text_len != checkpoint.max_text_len:
            raise ValueError(
                f"config.data.max_text_len: {config.data.max_text_len}, but the text tower "
                f"of {source} pools position {checkpoint.max_text_len - 1} of "
                f"{checkpoint.max_text_len}; set it to {checkpoint.max_text_len}"
            )
        if vocab_size > checkpoint.model.text.vocab_size:
            raise ValueError(
                f"config.data.tokenizer: vocab_size {vocab_size} exceeds the "
                f"{checkpoint.model.text.vocab_size} embeddings of the text tower of {source}"
            )
    set_towers(config, new_towers)
    model = build_model(config, vocab_size)
    # Checkpoints hold per-layer params; a tower built with ``scan`` wants them stacked.
    scanned = {param_name(m): model.towers[m].get("scan", False) for m in model.towers}
    params = {
        k: scan_layers(checkpoint.params[k]) if scanned.get(k) else checkpoint.params[k]
        for k in towers
    }
    check_params(params, model, config.data.image_size, source)
    logging.info("Initialising %s from %s", ", ".join(towers), source)
    return config, params
