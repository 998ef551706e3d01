"""Where activations live while a train step is traced: the rows of every encoder
block's activations stay split over the batch axes (``constrain_batch``), and token
embeddings are looked up in the whole table (``Embed``), so FSDP-sharded weights do not
pull the global batch onto every device. Outside :func:`batch_sharded_activations`
(evaluation, export, single-device use) all of it is the identity."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Sharding of the batch axis of activations while a train step is traced (None: left to
# XLA). Set by :func:`batch_sharded_activations`, read by :func:`constrain_batch`.
_ACTIVATION_SHARDING: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "activation_sharding", default=None
)


@contextlib.contextmanager
def batch_sharded_activations(sharding: jax.sharding.NamedSharding) -> Iterator[None]:
    """Within this context (around ``model.apply`` inside a jitted step), the encoder
    blocks' activations ``[b, ...]`` keep their rows split like ``sharding``'s leading
    dimension (the batch axes); their other dimensions are left to XLA (tensor parallel
    splits the MLP hidden and the heads). Without it XLA may follow FSDP-sharded weights
    instead and hold the whole global batch's activations on every device."""
    token = _ACTIVATION_SHARDING.set(sharding)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain_batch(x: jnp.ndarray) -> jnp.ndarray:
    """``x`` [b, ...] with its rows constrained to the batch axes of the enclosing
    :func:`batch_sharded_activations` (unchanged outside one)."""
    sharding = _ACTIVATION_SHARDING.get()
    if sharding is None:
        return x
    free = jax.sharding.PartitionSpec.UNCONSTRAINED
    spec = jax.sharding.PartitionSpec(sharding.spec[0], *([free] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(sharding.mesh, spec))


def constrain_replicated(x: jnp.ndarray) -> jnp.ndarray:
    """``x`` whole on every device inside :func:`batch_sharded_activations` (all-gathered
    from its FSDP shards; unchanged outside one)."""
    sharding = _ACTIVATION_SHARDING.get()
    if sharding is None:
        return x
    whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.lax.with_sharding_constraint(x, whole)


class Embed(nn.Embed):
    """``nn.Embed`` (same params) whose lookup, inside :func:`batch_sharded_activations`,
    uses the whole table on every device: ids [b, L] -> [b, L, features], rows split over
    the batch axes. (XLA otherwise looks up the global batch's ids in each device's
    vocabulary shard and sums the results: a [B, L, features] buffer per device.)"""

    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"Embed: ids must be integers, got {inputs.dtype}")
        (table,) = self.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
        return constrain_batch(jnp.take(constrain_replicated(table), inputs, axis=0))
