"""The decoder's loss (LocCa / CapPa, SigLIP 2): token cross-entropy under teacher forcing.

    loss = sum_{i,j} w_ij * (-log softmax(logits_ij)[labels_ij]) / sum_{i,j} w_ij

``w`` is 1 on the target tokens (and EOS) of each row, 0 on its prefix and padding, so
every target token of the batch counts equally (LocCa; big_vision's captioning loss).
Per-task means use the same formula restricted to the rows of one task.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [b, T, V], labels i32 [b, T] -> -log p(label) [b, T] (f32, stable for any
    logit scale: log-softmax subtracts the row max)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def weighted_mean(nll: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(w * nll) / max(sum(w), 1): the mean over the weighted tokens (0 for none)."""
    w = weights.astype(nll.dtype)
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1.0)


def captioning_loss(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    task: jax.Array | None = None,
    task_names: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean token NLL over all weighted tokens, {task name: its rows' mean}).

    logits [b, T, V]; labels i32 [b, T]; weights [b, T]; task i32 [b] indexes
    ``task_names`` (per-task metrics; none without ``task``)."""
    nll = token_nll(logits, labels)
    per_task = {}
    if task is not None:
        for i, name in enumerate(task_names):
            per_task[name] = weighted_mean(nll, weights * (task == i)[:, None])
    return weighted_mean(nll, weights), per_task
