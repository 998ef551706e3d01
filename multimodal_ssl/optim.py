"""Optimizer and learning-rate schedule from ``config.optim`` (all optax)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


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

    def is_kernel(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns ``(tx, schedule)``: optional global-norm clipping, then adamw/adafactor."""
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
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}")
    if cfg.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt, schedule
