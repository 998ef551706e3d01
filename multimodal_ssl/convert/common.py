"""Shared pieces of the checkpoint converters: the converted-checkpoint record, the
model config read off a param tree's shapes, and the shape check against our model.

Both converters first build a param tree in our image/text
:class:`~multimodal_ssl.models.MultiTower` layout (big_vision names: ``img/...``,
``txt/...``, ``t``, ``b``), then call
:func:`checkpoint_from_params`, which infers every size from the arrays themselves
(width, depth, mlp_dim, heads, patch, vocabulary, text length, poolings, heads) and
checks the tree against ``MultiTower.init``'s shapes, naming the file and the path of
any missing, unexpected or mis-shaped array.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from multimodal_ssl.models.layout import unscan_layers
from multimodal_ssl.models.towers import MultiTower

# The objective scalars a two-tower SigLIP checkpoint holds next to the towers.
SCALARS = {"t": (), "b": ()}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A converted two-tower checkpoint.

    ``params``: our image/text MultiTower tree of float32 numpy arrays (``t``, ``b`` are 0-d).
    ``model``: the ``config.model`` sub-tree that builds a matching model (keys
    ``image``, ``text``, ``embed_dim``, ``t_init``, ``b_init``; ``t_init``/``b_init`` are
    the imported values). ``image_size``: input side the image tower was trained at
    (None for fixed sin-cos position embeddings). ``max_text_len``: text positions.
    ``source``: the path it was read from. ``max_num_patches``: for a NaFlex (SigLIP 2)
    image tower, the patches each image is padded to (None: fixed-resolution tower).
    """

    params: dict[str, Any]
    model: ml_collections.ConfigDict
    image_size: int | None
    max_text_len: int
    source: str
    max_num_patches: int | None = None

    def build_model(self, dtype: str = "float32") -> MultiTower:
        """The image/text :class:`MultiTower` these params belong to, computing in ``dtype``."""
        return model_from_config(self.model, dtype)


def model_from_config(model_cfg: ml_collections.ConfigDict, dtype: str = "float32") -> MultiTower:
    """``Checkpoint.model`` (``image``, ``text`` tower kwargs, ``embed_dim``) -> the
    image/text :class:`MultiTower`."""
    return MultiTower(
        towers={
            "image": {"type": "vit", **model_cfg.image.to_dict()},
            "text": {"type": "text", **model_cfg.text.to_dict()},
        },
        embed_dim=model_cfg.embed_dim,
        dtype=dtype,
    )


def nest(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"a/b/c": x}`` -> ``{"a": {"b": {"c": x}}}``."""
    return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}``."""
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _depth(encoder: Mapping[str, Any], where: str) -> int:
    blocks = [k for k in encoder if re.fullmatch(r"encoderblock_\d+", k)]
    if not blocks:
        raise ValueError(f"{where}: no encoderblock_0 in the checkpoint")
    return len(blocks)


def _block_sizes(encoder: Mapping[str, Any], where: str) -> dict[str, int]:
    block = encoder["encoderblock_0"]
    _, heads, _ = block["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape
    return {
        "depth": _depth(encoder, where),
        "mlp_dim": int(block["MlpBlock_0"]["Dense_0"]["kernel"].shape[1]),
        "num_heads": int(heads),
    }


def _head_dim(tower: Mapping[str, Any]) -> int | None:
    return int(tower["head"]["kernel"].shape[1]) if "head" in tower else None


def _image_config(
    img: Mapping[str, Any], gelu_approximate: bool, naflex: bool
) -> tuple[dict, int | None]:
    kernel = img["embedding"]["kernel"]  # [ph, pw, C, width]
    ph, pw, _, width = kernel.shape
    cfg = {
        "width": int(width),
        **_block_sizes(img["Transformer"], "img/Transformer"),
        "patch_size": int(ph) if ph == pw else (int(ph), int(pw)),
        "posemb": "learn" if "pos_embedding" in img else "sincos2d",
        "pool": "map" if "MAPHead_0" in img else ("tok" if "cls" in img else "gap"),
        "num_classes": _head_dim(img),
        "gelu_approximate": gelu_approximate,
    }
    image_size = None
    if "pos_embedding" in img:
        side = math.isqrt(img["pos_embedding"].shape[1])
        if side * side != img["pos_embedding"].shape[1] or ph != pw:
            raise ValueError(
                f"img/pos_embedding: {img['pos_embedding'].shape[1]} positions are not a square "
                f"grid of square patches {ph}x{pw}"
            )
        image_size = side * int(ph)
        if naflex:
            cfg["naflex_positions"] = int(img["pos_embedding"].shape[1])
    elif naflex:
        raise ValueError("img/pos_embedding: NaFlex needs learned position embeddings")
    return cfg, image_size


def _text_config(txt: Mapping[str, Any], gelu_approximate: bool, pool: str) -> dict:
    vocab_size, width = txt["Embed_0"]["embedding"].shape
    return {
        "width": int(width),
        **_block_sizes(txt["Encoder_0"], "txt/Encoder_0"),
        "vocab_size": int(vocab_size),
        "max_len": int(txt["pos_embedding"].shape[1]),
        "pool": "map" if "MAPHead_0" in txt else pool,
        "num_classes": _head_dim(txt),
        "gelu_approximate": gelu_approximate,
    }


def checkpoint_from_params(
    params: dict[str, Any],
    source: str,
    *,
    gelu_approximate: bool = True,
    text_pool: str = "last",
    max_num_patches: int | None = None,
) -> Checkpoint:
    """Infers the model config from ``params`` (our layout) and checks every shape.
    ``max_num_patches``: set for a NaFlex image tower (see :class:`Checkpoint`).

    Raises ValueError naming ``source`` and the offending param paths.
    """
    try:
        params = unscan_layers(params)
        image, image_size = _image_config(params["img"], gelu_approximate, bool(max_num_patches))
        text = _text_config(params["txt"], gelu_approximate, text_pool)
        t, b = (np.asarray(params[k], np.float32).reshape(()) for k in ("t", "b"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: not a two-tower SigLIP checkpoint, missing {e}") from e
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), {**params, "t": t, "b": b})
    embed_dim = image["num_classes"] or image["width"]
    if (text["num_classes"] or text["width"]) != embed_dim:
        raise ValueError(
            f"{source}: image embeddings have dim {embed_dim} but text embeddings "
            f"{text['num_classes'] or text['width']}"
        )
    model = ml_collections.ConfigDict(
        {
            "image": image,
            "text": text,
            "embed_dim": embed_dim,
            "t_init": float(t),
            "b_init": float(b),
        }
    )
    patch = np.broadcast_to(image["patch_size"], (2,))
    probe_size = image_size or math.lcm(*map(int, patch))  # any fitting size if sin-cos
    check_params(params, model_from_config(model), probe_size, source)
    return Checkpoint(params, model, image_size, text["max_len"], source, max_num_patches)


def expected_shapes(model: MultiTower, image_size: int) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of an image/text ``model``'s params for square images of
    ``image_size``, plus the SigLIP scalars ``t`` and ``b``."""
    text_len = model.towers["text"]["max_len"]
    inputs = {
        "image": jnp.zeros((1, image_size, image_size, 3), jnp.float32),
        "text": jnp.zeros((1, text_len), jnp.int32),
    }
    abstract = jax.eval_shape(model.init, jax.random.key(0), inputs)["params"]
    return {**{k: tuple(v.shape) for k, v in flatten(abstract).items()}, **SCALARS}


def check_params(
    params: Mapping[str, Any], model: MultiTower, image_size: int, source: str
) -> None:
    """Raises ValueError listing every path of ``params`` that is missing, unexpected
    or has a different shape than ``model`` (for ``image_size`` inputs) expects.

    Only the top-level subtrees present in ``params`` are checked (e.g. ``{"img": ...}``
    checks the image tower alone), each of them completely.
    """
    want = {
        k: s for k, s in expected_shapes(model, image_size).items() if k.split("/")[0] in params
    }
    have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    problems = [f"missing {k} {s}" for k, s in want.items() if k not in have]
    problems += [f"unexpected {k} {s}" for k, s in have.items() if k not in want]
    problems += [
        f"{k}: shape {have[k]}, expected {s}" for k, s in want.items() if k in have and have[k] != s
    ]
    if problems:
        raise ValueError(f"{source}: params do not fit the model: " + "; ".join(problems[:20]))
