"""Ring CLIP loss: mean of image->text and text->image cross-entropies over a ring.

Both directions need a log-sum-exp over all B entries: each device keeps an online
``(max, sum)`` accumulator for its image rows, and the column accumulator of a text block
travels with the block and comes home, where the pieces are merged. The custom VJP saves
``x, y, t`` and the per-row / per-column log-sum-exps; the backward pass recomputes each
tile, sending the column LSEs along with their text block and its gradient buffer.

A log-sum-exp ``lse = m + log(z)`` is kept as its ``(max m, sum z)`` pair and the
backward pass forms probabilities as ``exp(l - m) / z``: at |logits| ~ 1e3 an f32 ``lse``
is only good to ~6e-5 absolute, and so would be every ``exp(l - lse)`` (XLA may also
reassociate ``(l - m) - log(z)`` into ``l - lse``).

With ``l_ij = s x_i.y_j`` and LSEs ``r_i`` (rows), ``c_j`` (columns), the loss is
``1/(2B) * sum_i (r_i - l_ii) + (c_i - l_ii)`` and
``dL/dl_ij = 1/(2B) * (exp(l_ij - r_i) + exp(l_ij - c_j)) - [i == j] / B``.
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
    rows,
    tile_loop,
    tile_scores,
    varying,
)


def _online_update(m: jax.Array, total: jax.Array, logits: jax.Array, axis: int):
    """Folds ``logits`` (reduced over ``axis``) into a running ``(max, sum of exp)``."""
    new_m = jnp.maximum(m, jnp.max(logits, axis=axis))
    shifted = logits - jnp.expand_dims(new_m, axis)
    return new_m, total * jnp.exp(m - new_m) + jnp.sum(jnp.exp(shifted), axis=axis)


def _merge(a, b):
    """Merges two ``(max, sum)`` accumulators of the same entries."""
    m = jnp.maximum(a[0], b[0])
    return m, a[1] * jnp.exp(a[0] - m) + b[1] * jnp.exp(b[0] - m)


def _forward(x, y, t, spec: RingSpec, decoupled: bool = False):
    """Local loss share and the row / column ``(max, sum)`` pairs (``[b]`` each).

    ``decoupled`` (DCL): the positives stay out of the log-sum-exps (a finite very
    negative score, not -inf: a tile row with only its positive must not give NaN)."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s, n, c = jnp.exp(t.astype(acc)), x.shape[0], spec.chunk
    put = jax.lax.dynamic_update_slice_in_dim

    def visit(state, yb, col_acc, own):
        def tile(carry, i0, j0):
            ((rm, rs), pos), (cm, cs) = carry
            _, _, logits, pos_mask = tile_scores(x, yb, s, i0, j0, c, own)
            if own:  # the positives, taken from the same logits as the LSEs
                pos = add_rows(pos, i0, jnp.sum(jnp.where(pos_mask, logits, 0), axis=1))
                if decoupled:
                    logits = jnp.where(pos_mask, jnp.finfo(acc).min, logits)
            rm_i, rs_i = _online_update(rows(rm, i0, c), rows(rs, i0, c), logits, 1)
            cm_j, cs_j = _online_update(rows(cm, j0, c), rows(cs, j0, c), logits, 0)
            return (
                ((put(rm, rm_i, i0, 0), put(rs, rs_i, i0, 0)), pos),
                (put(cm, cm_j, j0, 0), put(cs, cs_j, j0, 0)),
            )

        return tile_loop(n, c, tile, (state, col_acc))

    empty = varying((jnp.full((n,), -jnp.inf, acc), jnp.zeros((n,), acc)), spec)
    state = (empty, varying(jnp.zeros((n,), acc), spec))
    ((rm, rs), pos), (cm, cs) = ring_visit(spec, visit, state, y, empty, _merge)
    per_pair = (rm - pos + jnp.log(rs)) + (cm - pos + jnp.log(cs))
    return jnp.sum(per_pair) / (2 * spec.batch), ((rm, rs), (cm, cs))


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _local_loss(x, y, t, spec: RingSpec, decoupled: bool) -> jax.Array:
    return _forward(x, y, t, spec, decoupled)[0]


def _local_loss_fwd(x, y, t, spec, decoupled):
    local, (row_stats, col_stats) = _forward(x, y, t, spec, decoupled)
    return local, (x, y, t, row_stats, col_stats)


def _local_loss_bwd(spec, decoupled, res, ct):
    """Per-device cotangents of x, y, t (JAX sums those of the replicated t)."""
    x, y, t, row_stats, col_stats = res
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s, n, c = jnp.exp(t.astype(acc)), x.shape[0], spec.chunk
    scale = ct.astype(acc) / (2 * spec.batch)

    def visit(state, block, dy, own):
        yb, col_stats_b = block

        def tile(carry, i0, j0):
            (dx, dt), dy = carry
            xsi, yj, logits, pos = tile_scores(x, yb, s, i0, j0, c, own)
            rm, rs = (rows(a, i0, c)[:, None] for a in row_stats)
            cm, cs = (rows(a, j0, c)[None, :] for a in col_stats_b)
            g = scale * (jnp.exp(logits - rm) / rs + jnp.exp(logits - cm) / cs)
            if own:  # the positives: -l_ii / B (one per direction, each weighted 1 / 2B)
                g = jnp.where(pos, -2 * scale if decoupled else g - 2 * scale, g)
            gy = g @ yj
            dx = add_rows(dx, i0, s * gy)
            dy = add_rows(dy, j0, g.T @ xsi)
            # sum(g * logits) as sum(xsi * gy): the [c, c] logits need not stay live.
            return (dx, dt + jnp.sum(xsi * gy)), dy

        return tile_loop(n, c, tile, (state, dy))

    zeros = varying(((jnp.zeros(x.shape, acc), jnp.zeros((), acc)), jnp.zeros(y.shape, acc)), spec)
    (dx, dt), dy = ring_visit(spec, visit, zeros[0], (y, col_stats), zeros[1], jnp.add)
    return dx.astype(x.dtype), dy.astype(y.dtype), dt.astype(t.dtype)


_local_loss.defvjp(_local_loss_fwd, _local_loss_bwd)


def softmax_ring(
    x: jax.Array,
    y: jax.Array,
    t: jax.Array,
    *,
    axes: tuple[str, ...],
    W: int,
    chunk_size: int | None = None,
    decoupled: bool = False,
) -> jax.Array:
    """Per-device CLIP ring body for ``jax.shard_map``.

    x, y: local ``[b, d]`` (any float dtype; accumulation in >= f32); t: replicated scalar
    log-scale; axes: batch mesh axes (the ring, W devices). ``chunk_size`` tiles each
    ``b x b`` block (None: one tile). ``decoupled``: DCL, the positive out of the
    denominators (:mod:`multimodal_ssl.losses.dcl`). Returns the global loss, replicated.
    """
    spec = make_spec(axes, W, x.shape[0], chunk_size)
    t = jax.lax.pcast(t, axes, to="varying")
    return jax.lax.psum(_local_loss(x, y, t, spec, decoupled), axes)
