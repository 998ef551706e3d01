"""HuggingFace transformers SigLIP (``SiglipModel``) and SigLIP 2 NaFlex (``Siglip2Model``)
-> our two-tower params.

Reads a local folder with ``config.json`` and ``model.safetensors`` (or sharded
``model.safetensors.index.json``); no torch and no transformers needed. Mapping
(transformers name -> ours; torch ``Linear`` weights ``[out, in]`` are transposed):

- ``vision_model.embeddings.patch_embedding`` (Conv2d ``[d, C, p, p]``) ->
  ``img/embedding`` (``[p, p, C, d]``); ``position_embedding [n, d]`` -> ``img/pos_embedding
  [1, n, d]``; ``encoder.layers.{i}`` -> ``Transformer/encoderblock_{i}``
  (``layer_norm1/2`` -> ``LayerNorm_0/1``, ``self_attn.{q,k,v}_proj`` -> ``{query,key,value}``
  ``[d, heads, d/heads]``, ``out_proj`` -> ``out [heads, d/heads, d]``, ``mlp.fc1/2`` ->
  ``MlpBlock_0/Dense_0/1``); ``post_layernorm`` -> ``Transformer/encoder_norm``;
  ``head`` (torch ``MultiheadAttention`` with packed ``in_proj``) -> ``MAPHead_0``.
- ``text_model.embeddings.token_embedding`` -> ``txt/Embed_0``, ``position_embedding`` ->
  ``txt/pos_embedding``, ``encoder.layers.{i}`` -> ``Encoder_0/encoderblock_{i}``,
  ``final_layer_norm`` -> ``Encoder_0/encoder_norm``, ``head`` -> ``txt/head``.
- ``logit_scale`` -> ``t``, ``logit_bias`` -> ``b``.

``Siglip2Model`` (``model_type`` "siglip2") differs only in the image embedding: a
``Linear`` ``patch_embedding`` ``[d, p*p*C]`` over patches flattened as (row, col,
channel), which is our conv kernel ``[p, p, C, d]`` reshaped, and a square position grid
resized per image (``naflex_positions`` of the ViT). Images are padded to
``max_num_patches`` patches: ``preprocessor_config.json``'s value, else the position count.

transformers pools the text at the last position (``[:, -1]``, a pad token for short
texts), as our ``pool="last"`` does; image tower: MAP head and no projection.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from multimodal_ssl.convert.common import Checkpoint, checkpoint_from_params

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPES = ("siglip", "siglip2")
# transformers' activation names -> our MlpBlock.gelu_approximate.
_GELUS = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True, "gelu": False}
_SUPPORTED_LN_EPS = 1e-6  # our LayerNorms use big_vision's epsilon


def is_hf_dir(path: str) -> bool:
    """True for a folder holding ``config.json``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


class _Tensors:
    """The checkpoint's arrays by name; ``pop`` names the file on a missing key."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str):
        self._arrays = arrays
        self._source = source

    def has(self, key: str) -> bool:
        return key in self._arrays

    def pop(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            raise ValueError(f"{self._source}: missing tensor {key!r}")
        return np.asarray(self._arrays.pop(key), np.float32)

    def check_consumed(self) -> None:
        if self._arrays:
            raise ValueError(f"{self._source}: unexpected tensors {sorted(self._arrays)[:10]}")


def _read_tensors(path: str) -> _Tensors:
    from safetensors.numpy import load_file  # local: only HF import needs safetensors

    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        files = [WEIGHTS_FILE]
    else:
        raise ValueError(f"{path}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")
    arrays: dict[str, np.ndarray] = {}
    for name in files:
        arrays.update(load_file(os.path.join(path, name)))
    return _Tensors(arrays, path)


def _dense(w: _Tensors, prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": w.pop(f"{prefix}.weight").T, "bias": w.pop(f"{prefix}.bias")}


def _layer_norm(w: _Tensors, prefix: str) -> dict[str, np.ndarray]:
    return {"scale": w.pop(f"{prefix}.weight"), "bias": w.pop(f"{prefix}.bias")}


def _attention(
    qkv: list[tuple[np.ndarray, np.ndarray]], out: tuple[np.ndarray, np.ndarray], heads: int
) -> dict[str, Any]:
    """torch projections (``weight [d, d]``, ``bias [d]``) for q, k, v and out ->
    flax ``MultiHeadDotProductAttention`` params."""
    d = out[0].shape[0]
    tree = {
        name: {"kernel": wt.T.reshape(d, heads, d // heads), "bias": b.reshape(heads, d // heads)}
        for name, (wt, b) in zip(("query", "key", "value"), qkv, strict=True)
    }
    tree["out"] = {"kernel": out[0].T.reshape(heads, d // heads, d), "bias": out[1]}
    return tree


def _mlp(w: _Tensors, prefix: str) -> dict[str, Any]:
    return {"Dense_0": _dense(w, f"{prefix}.fc1"), "Dense_1": _dense(w, f"{prefix}.fc2")}


def _encoder(w: _Tensors, prefix: str, heads: int) -> dict[str, Any]:
    """``{prefix}.layers.{i}`` -> ``{encoderblock_{i}: ...}`` for every layer present."""
    blocks = {}
    i = 0
    while w.has(f"{prefix}.layers.{i}.layer_norm1.weight"):
        p = f"{prefix}.layers.{i}"
        attn = [
            (w.pop(f"{p}.self_attn.{n}_proj.weight"), w.pop(f"{p}.self_attn.{n}_proj.bias"))
            for n in "qkv"
        ]
        out = (w.pop(f"{p}.self_attn.out_proj.weight"), w.pop(f"{p}.self_attn.out_proj.bias"))
        blocks[f"encoderblock_{i}"] = {
            "LayerNorm_0": _layer_norm(w, f"{p}.layer_norm1"),
            "MultiHeadDotProductAttention_0": _attention(attn, out, heads),
            "LayerNorm_1": _layer_norm(w, f"{p}.layer_norm2"),
            "MlpBlock_0": _mlp(w, f"{p}.mlp"),
        }
        i += 1
    return blocks


def _patch_kernel(w: _Tensors, cfg: dict[str, Any]) -> np.ndarray:
    """Conv2d ``[d, C, p, p]`` or (SigLIP 2) Linear ``[d, p*p*C]`` -> ``[p, p, C, d]``."""
    weight = w.pop("vision_model.embeddings.patch_embedding.weight")
    if weight.ndim == 4:
        return weight.transpose(2, 3, 1, 0)
    p, c = int(cfg.get("patch_size", 16)), int(cfg.get("num_channels", 3))
    if weight.shape[1] != p * p * c:
        raise ValueError(
            f"vision_model.embeddings.patch_embedding.weight: shape {weight.shape}, expected "
            f"[d, {p * p * c}] for vision_config.patch_size {p}, num_channels {c}"
        )
    return weight.T.reshape(p, p, c, -1)


def _image_tower(w: _Tensors, heads: int, cfg: dict[str, Any]) -> dict[str, Any]:
    v = "vision_model"
    encoder = _encoder(w, f"{v}.encoder", heads)
    encoder["encoder_norm"] = _layer_norm(w, f"{v}.post_layernorm")
    in_w = np.split(w.pop(f"{v}.head.attention.in_proj_weight"), 3)
    in_b = np.split(w.pop(f"{v}.head.attention.in_proj_bias"), 3)
    out = (w.pop(f"{v}.head.attention.out_proj.weight"), w.pop(f"{v}.head.attention.out_proj.bias"))
    return {
        "embedding": {
            "kernel": _patch_kernel(w, cfg),
            "bias": w.pop(f"{v}.embeddings.patch_embedding.bias"),
        },
        "pos_embedding": w.pop(f"{v}.embeddings.position_embedding.weight")[None],
        "Transformer": encoder,
        "MAPHead_0": {
            "probe": w.pop(f"{v}.head.probe"),
            "MultiHeadDotProductAttention_0": _attention(
                list(zip(in_w, in_b, strict=True)), out, heads
            ),
            "LayerNorm_0": _layer_norm(w, f"{v}.head.layernorm"),
            "MlpBlock_0": _mlp(w, f"{v}.head.mlp"),
        },
    }


def _text_tower(w: _Tensors, heads: int) -> dict[str, Any]:
    t = "text_model"
    encoder = _encoder(w, f"{t}.encoder", heads)
    encoder["encoder_norm"] = _layer_norm(w, f"{t}.final_layer_norm")
    return {
        "Embed_0": {"embedding": w.pop(f"{t}.embeddings.token_embedding.weight")},
        "pos_embedding": w.pop(f"{t}.embeddings.position_embedding.weight")[None],
        "Encoder_0": encoder,
        "head": _dense(w, f"{t}.head"),
    }


def _tower_settings(cfg: dict[str, Any], name: str, source: str) -> tuple[int, bool]:
    """(num_heads, gelu_approximate) of one tower's config, with transformers' defaults."""
    act = cfg.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _GELUS:
        raise ValueError(f"{source}: {name}.hidden_act {act!r} is not one of {sorted(_GELUS)}")
    eps = cfg.get("layer_norm_eps", _SUPPORTED_LN_EPS)
    if not np.isclose(eps, _SUPPORTED_LN_EPS, rtol=1e-3, atol=0):
        raise ValueError(f"{source}: {name}.layer_norm_eps {eps} unsupported (only 1e-6)")
    if name == "vision_config" and not cfg.get("vision_use_head", True):
        raise ValueError(f"{source}: vision_config.vision_use_head=false is not supported")
    return int(cfg.get("num_attention_heads", 12)), _GELUS[act]


def load_hf(path: str) -> Checkpoint:
    """Converts the transformers SigLIP / SigLIP 2 (NaFlex) checkpoint folder ``path``.

    Raises ValueError naming the folder and the key for anything unsupported.
    """
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{path}/{CONFIG_FILE}: model_type {model_type!r} is not one of {list(MODEL_TYPES)}"
        )
    vision = config.get("vision_config") or {}
    img_heads, img_gelu = _tower_settings(vision, "vision_config", path)
    txt_heads, txt_gelu = _tower_settings(config.get("text_config") or {}, "text_config", path)
    if img_gelu != txt_gelu:
        raise ValueError(f"{path}: the towers use different GELUs; not supported")
    w = _read_tensors(path)
    params = {
        "img": _image_tower(w, img_heads, vision),
        "txt": _text_tower(w, txt_heads),
        "t": w.pop("logit_scale"),
        "b": w.pop("logit_bias"),
    }
    w.check_consumed()
    max_patches = _max_num_patches(path, vision) if model_type == "siglip2" else None
    return checkpoint_from_params(
        params, path, gelu_approximate=img_gelu, text_pool="last", max_num_patches=max_patches
    )


def _max_num_patches(path: str, vision: dict[str, Any]) -> int:
    """SigLIP 2: ``max_num_patches`` of ``preprocessor_config.json``, else
    ``vision_config.num_patches`` (transformers' defaults: 256 both)."""
    processor = os.path.join(path, PREPROCESSOR_FILE)
    value = None
    if os.path.isfile(processor):
        with open(processor) as f:
            value = json.load(f).get("max_num_patches")
    value = value if value is not None else vision.get("num_patches", 256)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: max_num_patches {value!r} is not a positive int")
    return value
