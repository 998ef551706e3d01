"""Ring SigLIP loss: ``-1/B * sum_{i,j} log sigmoid(z_ij (s x_i.y_j + bias))`` over a ring.

Per device (inside ``jax.shard_map``) the loss is a sum over its local image rows and all
B text columns; ``ring_visit`` brings every text block by. The custom VJP saves only
``x, y, t, b`` and recomputes each tile in the backward pass, where the gradient of a
travelling text block accumulates in a buffer that travels with it and returns home.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from multimodal_ssl.losses.ring import (
    RingSpec,
    add_rows,
    make_spec,
    ring_visit,
    tile_loop,
    tile_scores,
    varying,
)


def _signed_logits(scores: jax.Array, pos: jax.Array | None, bias: jax.Array) -> jax.Array:
    """``z * (scores + bias)`` for one tile (z = +1 on positives, -1 elsewhere)."""
    logits = scores + bias
    return -logits if pos is None else jnp.where(pos, logits, -logits)


def _forward(x, y, t, b, spec: RingSpec) -> jax.Array:
    """This device's loss share ``-1/B * sum_{local i, all j} log sigmoid(...)``."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s, bias, n, c = jnp.exp(t.astype(acc)), b.astype(acc), x.shape[0], spec.chunk

    def visit(total, yb, blk_acc, own):
        def tile(total, i0, j0):
            _, _, scores, pos = tile_scores(x, yb, s, i0, j0, c, own)
            return total - jnp.sum(jax.nn.log_sigmoid(_signed_logits(scores, pos, bias)))

        return tile_loop(n, c, tile, total), blk_acc

    total, _ = ring_visit(spec, visit, varying(jnp.zeros((), acc), spec), y, (), lambda u, v: ())
    return total / spec.batch


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _local_loss(x, y, t, b, spec: RingSpec) -> jax.Array:
    return _forward(x, y, t, b, spec)


def _local_loss_fwd(x, y, t, b, spec):
    return _forward(x, y, t, b, spec), (x, y, t, b)


def _local_loss_bwd(spec, res, ct):
    """Per-device cotangents of x, y, t, b (JAX sums those of the replicated t, b)."""
    x, y, t, b = res
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s, bias, n, c = jnp.exp(t.astype(acc)), b.astype(acc), x.shape[0], spec.chunk
    scale = ct.astype(acc) / spec.batch

    def visit(state, yb, dy, own):
        def tile(carry, i0, j0):
            (dx, dt, db), dy = carry
            xsi, yj, scores, pos = tile_scores(x, yb, s, i0, j0, c, own)
            # d/dl of -log sigmoid(z l) is -z sigmoid(-z l).
            zl = _signed_logits(scores, pos, bias)
            g = scale * jax.nn.sigmoid(-zl)
            if pos is not None:
                g = jnp.where(pos, -g, g)
            gy = g @ yj
            dx = add_rows(dx, i0, s * gy)
            dy = add_rows(dy, j0, g.T @ xsi)
            # sum(g * scores) as sum(xsi * gy): the [c, c] scores need not stay live.
            return (dx, dt + jnp.sum(xsi * gy), db + jnp.sum(g)), dy

        return tile_loop(n, c, tile, (state, dy))

    zeros = varying(
        (
            (jnp.zeros(x.shape, acc), jnp.zeros((), acc), jnp.zeros((), acc)),
            jnp.zeros(y.shape, acc),
        ),
        spec,
    )
    (dx, dt, db), dy = ring_visit(spec, visit, zeros[0], y, zeros[1], jnp.add)
    return dx.astype(x.dtype), dy.astype(y.dtype), dt.astype(t.dtype), db.astype(b.dtype)


_local_loss.defvjp(_local_loss_fwd, _local_loss_bwd)


def sigmoid_ring(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array,
    b: jax.Array,
    *,
    axes: tuple[str, ...],
    W: int,
    chunk_size: int | None = None,
) -> jax.Array:
    """Per-device SigLIP ring body for ``jax.shard_map``.

    x, y: local ``[b, d]`` (any float dtype; accumulation in >= f32); t, b: replicated
    scalars; axes: batch mesh axes (the ring, W devices). ``chunk_size`` tiles each
    ``b x b`` block (None: one tile). Returns the global loss, replicated.
    """
    spec = make_spec(axes, W, x.shape[0], chunk_size)
    t, b = jax.lax.pcast((t, b), axes, to="varying")
    return jax.lax.psum(_local_loss(x, y, t, b, spec), axes)
