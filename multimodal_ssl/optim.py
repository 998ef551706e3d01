"""Optimizer and learning-rate schedule from ``config.optim`` (all optax)."""

from __future__ import annotations

import re
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import optax

from multimodal_ssl.models.layout import axes_of, path_str


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``cfg.lr`` over ``warmup_steps``, then the named decay.

    ``cosine``: to 0 at ``total_steps``; ``rsqrt``: ``lr * sqrt(warmup / step)``
    (timescale = max(warmup_steps, 1)); ``constant``: flat.
    """
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps=max(total_steps - warmup, 1))
    elif cfg.schedule == "rsqrt":
        timescale = max(warmup, 1)

        def decay(count):
            return cfg.lr * jax.lax.rsqrt((count + timescale) / timescale)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, warmup), decay], boundaries=[warmup]
    )


def kernel_mask(params: Any) -> Any:
    """True for weight matrices (leaves named ``kernel``): the ones weight decay touches.

    Biases, LayerNorm scales, position embeddings, the MAP probe and the scalars
    ``t`` and ``b`` are not decayed.
    """

    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def _is_kernel(path: tuple[Any, ...]) -> bool:
    """Whether the jax key ``path`` ends in a leaf named ``kernel``."""
    return getattr(path[-1], "key", getattr(path[-1], "name", None)) == "kernel"


def muon_dimension_numbers(params: Any) -> Any:
    """Which params Muon orthogonalises, and as which matrix (the rest go to Adam).

    Each tower ``kernel`` is read, through its logical axes (``models.layout``), as a
    matrix ``x W = y`` with its input axes grouped into rows and its output axes into
    columns: dense ``[in, out]``; attention ``query/key/value`` ``[embed, heads, kv]`` ->
    ``[embed, heads*kv]``; attention ``out`` ``[heads, kv, embed]`` -> ``[heads*kv,
    embed]``; the patch embedding ``[ph, pw, c, width]`` -> ``[ph*pw*c, width]``. A
    scanned ``[layers, ...]`` axis is a batch axis (one matrix per layer); an unknown
    kernel is a matrix only if it is 2-d. Embedding tables, position embeddings, biases,
    norms, the MAP probe and the scalars ``t``, ``b`` get ``None`` (Adam), as in Muon's
    reference recipe.
    """
    dims = optax.contrib.MuonDimensionNumbers

    def spec(path, leaf):
        if not _is_kernel(path):
            return None
        axes = axes_of(path_str(path), leaf.ndim)
        if axes is None:
            return dims(0, 1) if leaf.ndim == 2 else None
        matrix = [i for i, axis in enumerate(axes) if axis != "layers"]
        split = -2 if tuple(axes[-2:]) == ("heads", "kv") else -1
        rows, cols = tuple(matrix[:split]), tuple(matrix[split:])
        return dims(rows if len(rows) > 1 else rows[0], cols if len(cols) > 1 else cols[0])

    return jax.tree_util.tree_map_with_path(spec, params)


def frozen_mask(params: Any, pattern: str | None) -> Any:
    """True for the params frozen by ``optim.freeze``: their ``"/"``-joined path
    (``img/Transformer/encoderblock_0/...``) matches the regex ``pattern`` (``re.search``).
    All False when ``pattern`` is None."""
    regex = None if pattern is None else re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex and regex.search(path_str(path))), params
    )


def partition_frozen(params: dict, pattern: str | None) -> tuple[dict, dict]:
    """``(trainable, frozen)``: nested dicts holding the params that ``pattern`` leaves
    trainable / freezes (see :func:`frozen_mask`); ``frozen`` is ``{}`` when ``pattern``
    is None. :func:`merge_params` undoes it. Raises ValueError naming ``optim.freeze``
    when the pattern matches no param or every param."""
    if pattern is None:
        return params, {}
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    regex = re.compile(pattern)
    frozen = {k: v for k, v in flat.items() if regex.search(k)}
    if not frozen or len(frozen) == len(flat):
        raise ValueError(
            f"config.optim.freeze: {pattern!r} matches {'no' if not frozen else 'every'} "
            f"param; paths look like {next(iter(flat))!r}"
        )
    trainable = {k: v for k, v in flat.items() if k not in frozen}
    unflatten = flax.traverse_util.unflatten_dict
    return unflatten(trainable, sep="/"), unflatten(frozen, sep="/")


def merge_params(a: dict, b: dict) -> dict:
    """The union of two disjoint nested param dicts (inverse of :func:`partition_frozen`)."""
    flat = flax.traverse_util.flatten_dict(a)
    flat.update(flax.traverse_util.flatten_dict(b))
    return flax.traverse_util.unflatten_dict(flat)


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns ``(tx, schedule)``: optional global-norm clipping, then adamw/adafactor.

    With ``cfg.freeze`` (a regex, see :func:`frozen_mask`) the frozen params go to
    ``optax.set_to_zero`` through ``optax.multi_transform``: zero updates and no
    optimizer state; clipping and weight decay see only the trainable params.
    """
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=kernel_mask
        )
    elif cfg.name == "adafactor":
        opt = optax.adafactor(
            schedule,
            weight_decay_rate=cfg.weight_decay or None,
            weight_decay_mask=kernel_mask,
        )
    elif cfg.name == "muon":
        # Muon on the weight matrices (update RMS matched to AdamW's, so AdamW learning
        # rates carry over: Liu et al. 2025), AdamW on everything else.
        opt = optax.contrib.muon(
            schedule,
            weight_decay=cfg.weight_decay,
            weight_decay_mask=kernel_mask,
            adam_b1=cfg.b1,
            adam_b2=cfg.b2,
            muon_weight_dimension_numbers=muon_dimension_numbers,
            consistent_rms=0.2,
        )
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}")
    if cfg.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    if cfg.freeze is not None:

        def labels(params):
            return jax.tree.map(
                lambda f: "frozen" if f else "trainable", frozen_mask(params, cfg.freeze)
            )

        opt = optax.multi_transform({"trainable": opt, "frozen": optax.set_to_zero()}, labels)
    return opt, schedule
