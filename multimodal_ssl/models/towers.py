"""The multi-tower contrastive model: one encoder per modality, each ending in a
projection to ``embed_dim`` and an L2 normalisation.

Towers are chosen by type name from :data:`TOWER_TYPES` (``config.model.towers.<modality>
.type``): ``vit`` (images, depth maps: any channel count), ``text`` (token ids),
``audio`` (a ViT over log-mel spectrogram patches), ``mlp`` (feature vectors) and
``sequence`` (time series). A new type is one :func:`register_tower` call.

Param tree: one top-level subtree per modality, named by :func:`param_name`
(``img`` and ``txt`` for the image and text towers, big_vision's two-tower layout, so
SigLIP checkpoints and converters map unchanged; the modality name otherwise). The
scalars of the objective (``t``, ``b``, ...) are not part of this module: objectives
own them (``multimodal_ssl.losses.objectives``) and the train state stores them next to
the towers' subtrees.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.models.audio import AudioTransformer
from multimodal_ssl.models.mlp import MlpTower, SequenceTower
from multimodal_ssl.models.text import TextTransformer
from multimodal_ssl.models.vit import ViT

# Squared-norm floor of l2_normalize: embeddings with norm < 1e-6 are not blown up.
_NORM_EPS_SQ = 1e-12
# Legacy (big_vision two_towers) names of the image and text towers' param subtrees.
_PARAM_NAMES = {"image": "img", "text": "txt"}

TOWER_TYPES: dict[str, type[nn.Module]] = {}


def register_tower(type_name: str, module_cls: type[nn.Module]) -> None:
    """Makes ``model.towers.<m>.type = type_name`` build ``module_cls``. The module takes
    its input as the first positional argument and ``train=`` as a keyword, returns
    ``[b, num_classes]`` float32, and has ``num_classes`` and ``dtype`` fields."""
    if type_name in TOWER_TYPES:
        raise ValueError(f"tower type {type_name!r} is already registered")
    TOWER_TYPES[type_name] = module_cls


for _name, _cls in (
    ("vit", ViT),
    ("text", TextTransformer),
    ("audio", AudioTransformer),
    ("mlp", MlpTower),
    ("sequence", SequenceTower),
):
    register_tower(_name, _cls)


def tower_class(type_name: str) -> type[nn.Module]:
    """The module class of tower type ``type_name``; ValueError lists the known types."""
    if type_name not in TOWER_TYPES:
        raise ValueError(f"unknown tower type {type_name!r}; known types: {sorted(TOWER_TYPES)}")
    return TOWER_TYPES[type_name]


def tower_fields(type_name: str) -> list[str]:
    """The keys a ``model.towers.<m>`` dict of this type may set (besides ``type``)."""
    fields = {f.name for f in dataclasses.fields(tower_class(type_name))}
    return sorted(fields - {"parent", "name"})


# Tower keys the model (or the data config) fills in: not part of a tower's config schema.
_INHERITED = ("dtype", "num_classes", "scan", "remat")
_INHERITED_BY_TYPE = {"text": ("vocab_size", "max_len")}
_SCALAR_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def tower_defaults(type_name: str) -> dict[str, Any]:
    """``{key: default}`` of every scalar key of tower type ``type_name`` that a config may
    set (None defaults as typed ml_collections placeholders)."""
    inherited = (*_INHERITED, *_INHERITED_BY_TYPE.get(type_name, ()))
    out: dict[str, Any] = {}
    for field in dataclasses.fields(tower_class(type_name)):
        if field.name in ("parent", "name", *inherited):
            continue
        kind = _SCALAR_TYPES.get(str(field.type).split("|")[0].strip())
        if kind is None:
            continue
        if field.default is None:
            out[field.name] = ml_collections.config_dict.placeholder(kind)
        elif isinstance(field.default, kind):
            out[field.name] = field.default
    return out


def param_name(modality: str) -> str:
    """Name of a modality's param subtree: ``img``/``txt`` for image/text, else itself."""
    return _PARAM_NAMES.get(modality, modality)


def l2_normalize(z: jax.Array) -> jax.Array:
    """z: [n, d] -> float32 [n, d] with unit rows (zero rows stay zero; finite grads)."""
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _NORM_EPS_SQ))


class MultiTower(nn.Module):
    """``{modality: input [B, ...]} -> {modality: z [B, embed_dim] f32, unit rows}``.

    ``towers``: ``{modality: {"type": ..., **module kwargs}}``. Each tower gets
    ``num_classes = embed_dim`` (its ``head``) and the model's ``dtype`` unless its
    dict sets them; a tower with ``num_classes: None`` must have ``width == embed_dim``
    (as SigLIP's image tower). Only the modalities present in ``inputs`` run, so
    embedding one modality costs one tower; initialise with every modality's input.
    ``train=True`` enables dropout, stochastic depth and token dropping (needs a
    "dropout" rng). ``normalize=False`` returns the projections before the L2
    normalisation (for objectives such as DeCUR that standardise them themselves).

    ``return_tokens``: inputs whose (ViT) tower also returns its patch tokens, as
    ``out["tokens/<input>"]`` [B, L, width].

    ``views``: ``{input: modality}``: extra inputs (second augmented views,
    ``data.views``) embedded by that modality's tower, with its params.
    """

    towers: Mapping[str, Mapping[str, Any]]
    embed_dim: int = 128
    dtype: Any = "float32"
    views: Mapping[str, str] | None = None

    def tower(self, modality: str) -> nn.Module:
        """The (unbound) tower module of ``modality``."""
        if modality not in self.towers:
            raise ValueError(f"no tower for modality {modality!r}; towers: {list(self.towers)}")
        kwargs = {"num_classes": self.embed_dim, "dtype": self.dtype, **self.towers[modality]}
        cls = tower_class(kwargs.pop("type"))
        return cls(**kwargs, name=param_name(modality))

    @nn.compact
    def __call__(
        self,
        inputs: Mapping[str, jax.Array],
        *,
        train: bool = False,
        normalize: bool = True,
        return_tokens: Sequence[str] = (),
    ) -> dict[str, jax.Array]:
        out, modules = {}, {}
        views = self.views or {}
        for name, x in inputs.items():
            modality = views.get(name, name)
            if modality not in modules:  # a view reuses its modality's tower
                modules[modality] = self.tower(modality)
            try:
                if name in return_tokens:  # un-pooled patch tokens too (LocCa's decoder)
                    z, out[f"tokens/{name}"] = modules[modality](x, train=train, return_tokens=True)
                else:
                    z = modules[modality](x, train=train)
            except ValueError as e:  # "ViT.pool: ..." -> "config.model.towers.image.pool: ..."
                raise ValueError(_config_error(modality, str(e))) from e
            if z.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"config.model.towers.{modality}: tower output has dim {z.shape[-1]} but "
                    f"model.embed_dim is {self.embed_dim} (set its num_classes or width)"
                )
            out[name] = l2_normalize(z) if normalize else z.astype(jnp.float32)
        return out


def _config_error(modality: str, message: str) -> str:
    """A tower's ``"<Module>.<key>: what"`` error as ``config.model.towers.<m>.<key>``."""
    if message.startswith("config."):
        return message
    match = re.match(r"[A-Z]\w*\.(\w+): (.*)", message, re.S)
    if match:
        return f"config.model.towers.{modality}.{match[1]}: {match[2]}"
    return f"config.model.towers.{modality}: {message}"


def tower_configs(config: ml_collections.ConfigDict, vocab_size: int) -> dict[str, dict]:
    """``{modality: tower kwargs}`` of ``config.model.towers``: text towers get the
    tokenizer's ``vocab_size`` and ``data.max_text_len``, and every tower that has them
    ``model.scan``/``model.remat`` — unless the tower's own dict sets them."""
    out = {}
    for modality, tower in config.model.towers.items():
        fields = tower_fields(tower["type"])
        base = {k: config.model[k] for k in ("scan", "remat") if k in fields}
        if tower["type"] == "text":
            base.update(vocab_size=vocab_size, max_len=config.data.max_text_len)
        out[modality] = {**base, **tower.to_dict()}
    return out


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> MultiTower:
    """The multi-tower model of ``config.model`` (see :func:`tower_configs`), embedding
    the extra inputs of ``config.data.views`` with their modality's tower."""
    return MultiTower(
        towers=tower_configs(config, vocab_size),
        embed_dim=config.model.embed_dim,
        dtype=config.model.dtype,
        views=dict(config.data.get("views") or {}) or None,
    )
