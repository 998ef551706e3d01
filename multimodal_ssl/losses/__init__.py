"""Contrastive losses: SigLIP (``sigmoid_loss``) and CLIP (``softmax_loss``). The
training objectives built on them (by name, over modality pairs, with their own
parameters) are in :mod:`multimodal_ssl.losses.objectives`; dense forms for batches with
absent rows in :mod:`multimodal_ssl.losses.masked`.

Each has three implementations, equal in value and gradient (x, y, t, b):

* ``impl="global"``: dense ``[B, B]`` math; XLA partitions it (``mesh`` optional: when
  given, ``x``/``y`` rows are sharded over its batch axes first).
* ``impl="all_gather"``: ``jax.shard_map`` over the batch axes; gather all texts and
  score a local ``[b, B]`` block (``mesh`` required).
* ``impl="ring"``: ``jax.shard_map``; text blocks travel around the ring of batch shards
  (bidirectional ``ppermute``) with a recomputing custom VJP, so per-device memory is
  ``O(b * d + c^2)`` independent of the device count (``mesh`` required).

``chunk_size`` (ring only) scores each ``b x b`` block as ``c x c`` tiles in a loop;
``None`` or ``chunk_size >= b`` is one tile, otherwise it must divide ``b = B / W``.
The dense implementations ignore it (their memory is ``B^2`` or ``b * B`` regardless).

``batch_axes``: mesh axes the batch is sharded over; default: those of
``("data", "fsdp")`` in the mesh. Other mesh axes (e.g. ``"model"``) replicate the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
from jax.sharding import Mesh

from multimodal_ssl.losses import common, pairwise
from multimodal_ssl.losses.ring_sigmoid import sigmoid_ring
from multimodal_ssl.losses.ring_softmax import softmax_ring

__all__ = ["LOSSES", "get_loss", "sigmoid_loss", "softmax_loss"]


def sigmoid_loss(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array | float,
    b: jax.Array | float,
    *,
    impl: str = "global",
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    batch_axes: Sequence[str] | str | None = None,
) -> jax.Array:
    """SigLIP loss ``-1/B * sum_{i,j} log sigmoid(z_ij (exp(t) x_i.y_j + b))``.

    x: ``[B, d]`` image embeddings, y: ``[B, d]`` text embeddings (row i pairs with row
    i; f32/bf16/f64, accumulated in >= f32), t: scalar log-scale, b: scalar bias.
    ``z_ii = +1``, all other pairs are negatives. Returns a scalar (f32; f64 for f64 x).
    Raises ValueError for bad shapes, impl, chunk_size, mesh or batch_axes.
    """
    x, y = common.prepare_pair(x, y, impl, mesh, chunk_size, batch_axes)
    t, b = common.check_scalar("t", t), common.check_scalar("b", b)
    if impl == "global":
        return pairwise.sigmoid_global(x, y, t, b)
    body = pairwise.sigmoid_all_gather
    if impl == "ring":
        body = partial(sigmoid_ring, chunk_size=chunk_size)
    return common.run_sharded(body, mesh, batch_axes, impl, x, y, t, b)


def softmax_loss(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array | float,
    *,
    impl: str = "global",
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    batch_axes: Sequence[str] | str | None = None,
) -> jax.Array:
    """CLIP loss: mean of the image->text and text->image cross-entropies.

    Logits ``exp(t) * x @ y.T`` with the matching pairs on the diagonal. x, y: ``[B, d]``
    (f32/bf16/f64, accumulated in >= f32), t: scalar log-scale. Returns a scalar.
    Raises ValueError for bad shapes, impl, chunk_size, mesh or batch_axes.
    """
    x, y = common.prepare_pair(x, y, impl, mesh, chunk_size, batch_axes)
    t = common.check_scalar("t", t)
    if impl == "global":
        return pairwise.softmax_global(x, y, t)
    body = pairwise.softmax_all_gather
    if impl == "ring":
        body = partial(softmax_ring, chunk_size=chunk_size)
    return common.run_sharded(body, mesh, batch_axes, impl, x, y, t)


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "sigmoid": sigmoid_loss,
    "softmax": softmax_loss,
}


def get_loss(name: str) -> Callable[..., jax.Array]:
    """The loss function registered under ``name`` ("sigmoid" or "softmax")."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss name {name!r}; valid names: {sorted(LOSSES)}")
    return LOSSES[name]


# The objectives defined in their own modules register themselves on import; importing
# any losses module (objectives.py included) thus sees the whole registry.
from multimodal_ssl.losses import (  # noqa: E402, F401
    decur,
    literature,
    matryoshka,
    mixture,
    objectives,
    simclr,
)
