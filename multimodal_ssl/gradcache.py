"""Gradient accumulation that keeps the contrastive batch whole (GradCache).

A contrastive loss couples every example with every other, so summing the gradients
of per-micro-batch losses would change the objective (fewer negatives). GradCache
(Gao et al., 2021, arXiv 2101.06983) instead

1. embeds all ``M`` micro-batches without building a backward graph,
2. evaluates the loss on the full ``[B, d]`` embeddings (any ``loss.impl``, ring
   included) and its gradient w.r.t. the embeddings and the loss's own params
   (``t``, ``b``),
3. re-runs each micro-batch's forward under :func:`jax.vjp` and pulls its slice of the
   embedding gradient back to the parameters, summing over micro-batches.

The result equals the full-batch gradient (up to float summation order) while the
activation memory is that of one micro-batch of ``B / M`` rows; the price is one
extra forward pass. Micro-batches are strided (micro-batch ``k`` holds rows
``i % M == k``) so each one stays evenly split over the batch shards of the mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

EmbedFn = Callable[[Any, Any], Any]
LossFn = Callable[[Any, Any], tuple[jax.Array, Any]]


def _split(tree: Any, m: int, sharding: NamedSharding | None) -> Any:
    """Leaves ``[B, ...]`` -> ``[M, B/M, ...]``; micro-batch k holds rows ``i % M == k``."""

    def split(a):
        b = a.shape[0]
        if b % m:
            raise ValueError(
                f"config.optim.microbatches: batch of {b} rows (leaf shape {a.shape}) is not "
                f"divisible by {m} micro-batches"
            )
        a = jnp.swapaxes(a.reshape(b // m, m, *a.shape[1:]), 0, 1)
        if sharding is not None:
            spec = (None, *sharding.spec)
            a = jax.lax.with_sharding_constraint(
                a, NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
            )
        return a

    return jax.tree.map(split, tree)


def _merge(tree: Any, sharding: NamedSharding | None) -> Any:
    """Inverse of :func:`_split`: ``[M, B/M, ...]`` -> ``[B, ...]`` in the original order."""

    def merge(a):
        m, n = a.shape[:2]
        a = jnp.swapaxes(a, 0, 1).reshape(m * n, *a.shape[2:])
        return a if sharding is None else jax.lax.with_sharding_constraint(a, sharding)

    return jax.tree.map(merge, tree)


def value_and_grad(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    num_microbatches: int,
    batch_sharding: NamedSharding | None = None,
) -> tuple[tuple[jax.Array, Any], Any]:
    """``((loss, aux), grads)`` of ``loss_fn(params, embed_fn(params, batch))``.

    ``embed_fn(params, batch) -> emb``: a pytree of per-example arrays ``[b, ...]`` (e.g.
    ``{"zimg": [b, d], "ztxt": [b, d]}``) computed row by row (no cross-example
    interaction, no batch statistics), so micro-batches embed independently.
    ``loss_fn(params, emb) -> (scalar loss, aux)`` on the full batch ``[B, ...]``; it may
    use params directly (temperature, bias). ``batch``: pytree of ``[B, ...]`` arrays with
    ``B`` divisible by ``num_microbatches``. ``batch_sharding``: sharding of the batch
    (rows over the batch axes); each micro-batch and the merged embeddings keep it.
    Must run under ``jax.jit``; ``num_microbatches == 1`` is plain ``jax.value_and_grad``.
    """
    if num_microbatches < 1:
        raise ValueError(f"config.optim.microbatches: must be >= 1, got {num_microbatches}")
    if num_microbatches == 1:
        return jax.value_and_grad(lambda p: loss_fn(p, embed_fn(p, batch)), has_aux=True)(params)

    micro = _split(batch, num_microbatches, batch_sharding)

    def embed_one(_, mb):
        return None, embed_fn(params, mb)

    _, emb = jax.lax.scan(embed_one, None, micro)  # leaves [M, B/M, ...]
    emb = _merge(jax.lax.stop_gradient(emb), batch_sharding)

    (loss, aux), (grads, emb_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, emb
    )
    emb_grads = _split(emb_grads, num_microbatches, batch_sharding)

    def backprop_one(acc, xs):
        mb, g = xs
        _, pullback = jax.vjp(lambda p: embed_fn(p, mb), params)
        (dp,) = pullback(g)
        return jax.tree.map(jnp.add, acc, dp), None

    grads, _ = jax.lax.scan(backprop_one, grads, (micro, emb_grads))
    return (loss, aux), grads
