"""Parameter layout of the towers: logical axis names of every parameter, and conversion
between the per-layer (``encoderblock_{i}``) and scanned (``encoderblock``) layouts.

Logical axes name what a dimension *is* (``embed``, ``mlp``, ``heads``, ``kv``,
``vocab``, ``layers``, ...); ``multimodal_ssl.sharding`` maps them to mesh axes with
config rules (tensor parallel: ``heads`` and ``mlp`` over ``model``) and adds FSDP.
They are declared here, by parameter path, rather than by boxing the initialisers
(``nn.with_logical_partitioning``): the param trees stay plain arrays for every other
user (evals, checkpoint converters, optimizer masks, tests).

Scanned layout (``Encoder(scan=True)``, big_vision's ``scan`` layout): the blocks'
params are stacked under ``encoderblock`` with a leading ``[depth]`` axis (logical
``layers``) instead of ``depth`` subtrees ``encoderblock_0 .. encoderblock_{depth-1}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

# First match wins; patterns are searched in the "/"-joined param path.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(LayerNorm_\d+|encoder_norm)/(scale|bias)$", ("embed",)),
    (r"MlpBlock_\d+/Dense_0/kernel$", ("embed", "mlp")),
    (r"MlpBlock_\d+/Dense_0/bias$", ("mlp",)),
    (r"MlpBlock_\d+/Dense_1/kernel$", ("mlp", "embed")),
    (r"MlpBlock_\d+/Dense_1/bias$", ("embed",)),
    (r"(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (r"(query|key|value)/bias$", ("heads", "kv")),
    (r"MultiHeadDotProductAttention_0/out/kernel$", ("heads", "kv", "embed")),
    (r"MultiHeadDotProductAttention_0/out/bias$", ("embed",)),
    (r"(^|/)embedding/kernel$", ("patch_h", "patch_w", "channels", "embed")),
    (r"(^|/)embedding/bias$", ("embed",)),
    (r"Embed_0/embedding$", ("vocab", "embed")),
    (r"(^|/)input_proj/kernel$", ("features", "embed")),
    (r"(^|/)input_proj/bias$", ("embed",)),
    (r"(^|/)pos_embedding$", (None, "seq", "embed")),
    (r"(^|/)(cls|probe)$", (None, None, "embed")),
    (r"(^|/)head/kernel$", ("embed", "joint")),
    (r"(^|/)head/bias$", ("joint",)),
    (r"^(t|b)(_\w+)?$", ()),  # objective scalars: t, b, t_image_audio, ...
)
SCANNED = "encoderblock"
_BLOCK = re.compile(r"^encoderblock_(\d+)$")


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def path_str(path: tuple[Any, ...]) -> str:
    """A jax key path as ``"img/Transformer/encoderblock_0/LayerNorm_0/scale"``."""
    return "/".join(_key(e) for e in path)


def axes_of(path: str, ndim: int) -> tuple[str | None, ...] | None:
    """Logical axes of the param at ``path`` with ``ndim`` dims, or None if unknown.

    Params inside a scanned ``encoderblock`` get a leading ``"layers"`` axis.
    Raises ValueError when a known param has an unexpected number of dims.
    """
    scanned = f"/{SCANNED}/" in f"/{path}"
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path):
            axes = ("layers", *axes) if scanned else axes
            if len(axes) != ndim:
                raise ValueError(f"param {path}: has {ndim} dims but its logical axes are {axes}")
            return axes
    return None


def logical_axes(params: Any) -> Any:
    """Tree of logical-axis tuples matching ``params`` (arrays or ShapeDtypeStructs).

    Unknown params get all-``None`` axes (replicated unless FSDP shards them); list
    them with :func:`unannotated`.
    """

    def one(path, leaf):
        axes = axes_of(path_str(path), len(leaf.shape))
        return (None,) * len(leaf.shape) if axes is None else axes

    return jax.tree_util.tree_map_with_path(one, params)


def unannotated(params: Any) -> list[str]:
    """Paths of the params that :data:`PARAM_AXES` does not name."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return [path_str(p) for p, x in leaves if axes_of(path_str(p), len(x.shape)) is None]


def _stack(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    blocks = {}
    for key, value in tree.items():
        match = _BLOCK.match(key)
        if match:
            blocks[int(match.group(1))] = value
        elif isinstance(value, Mapping):
            out[key] = _stack(value)
        else:
            out[key] = value
    if blocks:
        if SCANNED in tree:
            raise ValueError(f"params: both {SCANNED!r} and {SCANNED}_<i> subtrees present")
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(
                f"params: encoder blocks {sorted(blocks)} are not 0..{len(blocks) - 1}"
            )
        out[SCANNED] = jax.tree.map(lambda *xs: jnp.stack(xs), *(blocks[i] for i in sorted(blocks)))
    return out


def _unstack(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == SCANNED:
            depth = {x.shape[0] for x in jax.tree.leaves(value)}
            if len(depth) != 1:
                raise ValueError(f"params: {SCANNED} leaves disagree on depth: {sorted(depth)}")
            for i in range(depth.pop()):
                out[f"{SCANNED}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
        elif isinstance(value, Mapping):
            out[key] = _unstack(value)
        else:
            out[key] = value
    return out


def scan_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer -> scanned layout: every group of ``encoderblock_{i}`` subtrees becomes
    one ``encoderblock`` subtree whose leaves are stacked ``[depth, ...]``."""
    return _stack(params)


def unscan_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned -> per-layer layout (inverse of :func:`scan_layers`)."""
    return _unstack(params)
