"""Jitted, batch-sharded embedding of one modality with given params: what the evals,
``evaluate``, ``embed`` and ``pretrained`` call. Imports nothing of the trainer."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from multimodal_ssl.data import rows
from multimodal_ssl.models.towers import MultiTower, param_name, tower_class
from multimodal_ssl.sharding import batch_sharding, batch_size_per_step, replicated

EmbedFn = Callable[[rows.Rows], np.ndarray]


class Embedder:
    """``embed(modality, inputs [n, ...]) -> f32 [n, d]`` (numpy, L2-normalised rows).

    Inputs of any length are padded to a multiple of the batch shards, so the evaluators
    need not know the mesh. ``params`` must be set before embedding (the train loop
    points it at the current state's params).
    """

    def __init__(self, model: MultiTower, mesh: Mesh):
        self.mesh = mesh
        self._shards = batch_size_per_step(mesh)
        self.modalities = tuple(model.towers)
        self.params = None
        # More callables handed to the evaluators by name (e.g. "locca": a Captioner).
        self.extra_fns: dict[str, Callable] = {}
        out = replicated(mesh)
        self._fns = {
            m: jax.jit(
                functools.partial(lambda m, p, x: model.apply({"params": p}, {m: x})[m], m),
                out_shardings=out,
            )
            for m in self.modalities
        }
        # Un-pooled patch tokens of the ViT towers (the dense probe, evals/dense_probe.py).
        self._token_fns = {
            m: jax.jit(
                functools.partial(_patch_tokens, _standalone(model, m), param_name(m)),
                out_shardings=out,
            )
            for m in self.modalities
            if model.towers[m]["type"] == "vit"
        }
        # NaFlex image dicts: one compilation per batch size, none per image size.
        self.naflex_fn = jax.jit(
            lambda p, x: model.apply({"params": p}, {"image": x})["image"], out_shardings=out
        )

    def embed(self, modality: str, inputs: rows.Rows) -> np.ndarray:
        """inputs: [n, ...] one modality's model inputs (or a dict of them: a NaFlex
        image, :mod:`~.data.rows`) -> f32 [n, d]."""
        if modality not in self._fns:
            raise ValueError(f"no tower for modality {modality!r}; towers: {self.modalities}")
        inputs = rows.as_numpy(inputs)
        n = rows.num_rows(inputs)
        inputs = rows.pad(inputs, self.padded_size(n))
        x = jax.device_put(inputs, batch_sharding(self.mesh))
        return np.asarray(self._fns[modality](self.params, x))[:n]

    def patch_tokens(self, modality: str, images: np.ndarray) -> np.ndarray:
        """images: [n, H, W, C] of a ViT tower -> f32 [n, h*w, width]: the encoder's output
        at the patch positions (after its final norm; no class token, pooling or head)."""
        if modality not in self._token_fns:
            raise ValueError(f"modality {modality!r}: no ViT tower gives patch tokens")
        images = np.asarray(images)
        n = len(images)
        x = jax.device_put(rows.pad(images, self.padded_size(n)), batch_sharding(self.mesh))
        return np.asarray(self._token_fns[modality](self.params, x))[:n]

    def padded_size(self, n: int) -> int:
        """``n`` rounded up to a multiple of the batch shards."""
        return -(-n // self._shards) * self._shards

    def embed_naflex(self, inputs: dict[str, np.ndarray], n: int) -> np.ndarray:
        """NaFlex image dict (``patches`` [B, N, p*p*C], ``mask`` [B, N],
        ``spatial_shapes`` [B, 2]; B a multiple of the batch shards, see
        :meth:`padded_size`) -> f32 [n, d] of its first ``n`` images."""
        x = jax.device_put(inputs, batch_sharding(self.mesh))
        return np.asarray(self.naflex_fn(self.params, x))[:n]

    def embed_fns(self) -> dict[str, EmbedFn]:
        """``{modality: inputs -> embeddings}`` for every tower (what evaluators take); a
        ViT tower's function also has ``.patch_tokens`` (:meth:`patch_tokens`); and
        :attr:`extra_fns`."""
        fns = {m: functools.partial(self.embed, m) for m in self.modalities}
        for m in self._token_fns:
            fns[m].patch_tokens = functools.partial(self.patch_tokens, m)
        return {**fns, **self.extra_fns}

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """images: f32 [n, H, W, 3] in the model's value range -> [n, d]."""
        return self.embed("image", images)

    def embed_texts(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: i32 [n, L] -> [n, d]."""
        return self.embed("text", tokens)


def _standalone(model: MultiTower, modality: str):
    """``modality``'s tower as a top-level module (as ``MultiTower.tower`` builds it)."""
    kwargs = {"num_classes": model.embed_dim, "dtype": model.dtype, **model.towers[modality]}
    return tower_class(kwargs.pop("type"))(**kwargs, parent=None)


def _patch_tokens(tower, name: str, params, images):
    """params: the model's; images [b, H, W, C] -> f32 [b, h*w, width]."""
    _, tokens = tower.apply({"params": params[name]}, images, return_tokens=True)
    return tokens.astype(jax.numpy.float32)
