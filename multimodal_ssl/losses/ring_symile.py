"""Symile with every combination of non-anchor rows (``negatives="n_squared"``) over a ring.

Formula: :mod:`multimodal_ssl.losses.symile`. The ``[B]*M`` score tensor is never formed:
inside ``jax.shard_map`` over the batch axes (W devices, ``b = B / W`` local rows each),
device k keeps its block of modality 1 at home and meets every tuple of blocks of
modalities 2..M through M-1 nested unidirectional rings: the block of modality 2 makes
one full turn (W hops, ``ppermute`` by +1); during each of its stops the block of
modality 3 makes a full turn, and so on. Every device thus scores its own modality-1
rows against each of the ``W^{M-1}`` tuples of the other modalities' blocks exactly once,
as a ``[b]*M`` tile, and every travelling block comes home after its turn.

Each modality needs a log-sum-exp over all axes but its own: an online ``(max, sum)``
accumulator per row travels with each block (modality 1's stays home); the positives
``l(i, ..., i)`` are local. The custom VJP saves the embeddings, ``t`` and the final
``(max, sum)`` pairs and recomputes each tile; a gradient buffer travels with each block.
``chunk_size`` c scores the home block c rows at a time (a ``[c, b, ..., b]`` tile, and
``[c, b, d]`` einsum intermediates for M = 3). Per-device memory: O(M * b * d + c b^{M-1}
+ c b d), independent of W; compute per device
``O(W^{M-1} b^M d)`` (the O(n^{M-1}) negatives are inherent to this form).

With ``lse_m`` the per-row log-sum-exp of modality m and ``ct_m`` the cotangent of the
anchor-m loss ``1/B sum_i (lse_m[i] - pos_i)``::

    dL/dl(c) = sum_m ct_m / B * exp(l(c) - lse_m[c_m])      (every tuple c)
    dL/dpos_i = -sum_m ct_m / B
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from multimodal_ssl.losses import common
from multimodal_ssl.losses.ring import RingSpec, add_rows, make_spec, rows, shift, varying
from multimodal_ssl.losses.symile import check_embeddings, mip_tensor, positive_mip


def _others(m: int, k: int) -> tuple[int, ...]:
    return tuple(a for a in range(m) if a != k)


def _online_update(acc, scores, axis):
    """Folds ``scores`` reduced over every axis but ``axis`` into ``(max, sum)`` ``[b]``."""
    m, total = acc
    axes = _others(scores.ndim, axis)
    new_m = jnp.maximum(m, jnp.max(scores, axis=axes))
    shape = [1] * scores.ndim
    shape[axis] = -1
    shifted = jnp.exp(scores - new_m.reshape(shape))
    return new_m, total * jnp.exp(m - new_m) + jnp.sum(shifted, axis=axes)


def _nested(spec: RingSpec, level: int, travellers: list, carry, visit):
    """Turns the blocks of ``travellers[level:]`` through all their relative positions.

    travellers: per modality 2..M a pytree whose first leaf group ``[0]`` is the block
    (sent ahead) and ``[1]`` its accumulator. visit(carry, travellers) -> (carry,
    travellers) scores the current tuple. Returns (carry, travellers), all home again.
    """
    if level == len(travellers):
        return visit(carry, travellers)

    def body(_, state):
        carry, travellers = state
        block, acc = travellers[level]
        ahead = shift(block, spec, 1)
        carry, travellers = _nested(spec, level + 1, travellers, carry, visit)
        travellers = list(travellers)
        travellers[level] = (ahead, shift(travellers[level][1], spec, 1))
        return carry, travellers

    return jax.lax.fori_loop(0, spec.W, body, (carry, list(travellers)))


def _row_chunks(n: int, c: int, fn, carry):
    """Calls ``fn(carry, i0)`` for the first row ``i0`` of every ``c``-row chunk of ``n``
    rows (traced in a ``fori_loop``; one chunk runs without a loop)."""
    if c == n:
        return fn(carry, 0)
    return jax.lax.fori_loop(0, n // c, lambda k, carry: fn(carry, k * c), carry)


def _put(a, update, i0):
    return jax.lax.dynamic_update_slice_in_dim(a, update, i0, axis=0)


def _forward(embs, t, spec: RingSpec):
    """Per-anchor local loss shares ``[M]`` and the per-modality ``(max, sum)`` ``[b]``."""
    acc_t = jnp.promote_types(embs[0].dtype, jnp.float32)
    s, n, c = jnp.exp(t.astype(acc_t)), embs[0].shape[0], spec.chunk
    empty = varying((jnp.full((n,), -jnp.inf, acc_t), jnp.zeros((n,), acc_t)), spec)

    def visit(home, travellers):
        blocks = [b for b, _ in travellers]

        def chunk(carry, i0):  # rows i0..i0+c of the home block against every tuple
            (hm, hs), accs = carry
            scores = mip_tensor([rows(embs[0], i0, c), *blocks], s)  # [c, b, ...]
            m_i, s_i = _online_update((rows(hm, i0, c), rows(hs, i0, c)), scores, 0)
            accs = [_online_update(a, scores, k + 1) for k, a in enumerate(accs)]
            return (_put(hm, m_i, i0), _put(hs, s_i, i0)), accs

        home, accs = _row_chunks(n, c, chunk, (home, [a for _, a in travellers]))
        return home, list(zip(blocks, accs, strict=True))

    travellers = [(e, empty) for e in embs[1:]]
    home, travellers = _nested(spec, 0, travellers, empty, visit)
    stats = [home, *[a for _, a in travellers]]
    pos = positive_mip(embs, s)
    shares = jnp.stack([jnp.sum(mx + jnp.log(sm) - pos) for mx, sm in stats]) / spec.batch
    return shares, stats


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _local_shares(embs, t, spec: RingSpec) -> jax.Array:
    return _forward(embs, t, spec)[0]


def _local_shares_fwd(embs, t, spec):
    shares, stats = _forward(embs, t, spec)
    return shares, (embs, t, stats)


def _local_shares_bwd(spec, res, ct):
    """Per-device cotangents of every embedding and of t (JAX sums those of t)."""
    embs, t, stats = res
    acc_t = jnp.promote_types(embs[0].dtype, jnp.float32)
    s, m, n, c = jnp.exp(t.astype(acc_t)), len(embs), embs[0].shape[0], spec.chunk
    weights = ct.astype(acc_t) / spec.batch  # [M]
    letters = string.ascii_letters[:m]

    def grad_of(k, g, operands):
        """d sum(g * l) / d operand k: contract g with every other operand over its axis."""
        lhs = ",".join([letters, *[f"{letters[a]}z" for a in _others(m, k)]])
        return jnp.einsum(f"{lhs}->{letters[k]}z", g, *[operands[a] for a in _others(m, k)])

    def visit(carry, travellers):
        blocks = [b for b, _ in travellers]

        def chunk(carry, i0):  # rows i0..i0+c of the home block against every tuple
            (d_home, dt), grads = carry
            first = rows(embs[0], i0, c)
            scores = mip_tensor([first, *[b for b, _ in blocks]], s)  # [c, b, ...]
            home_stats = tuple(rows(a, i0, c) for a in stats[0])
            g = 0.0
            for k, (mx, sm) in enumerate([home_stats, *[st for _, st in blocks]]):
                shape = [1] * m
                shape[k] = -1
                g = g + weights[k] * jnp.exp(scores - mx.reshape(shape)) / sm.reshape(shape)
            operands = [s * first.astype(acc_t), *[b.astype(acc_t) for b, _ in blocks]]
            d_first = grad_of(0, g, operands)
            d_home = add_rows(d_home, i0, s * d_first)
            dt = dt + jnp.sum(d_first * operands[0])
            grads = [grad + grad_of(k + 1, g, operands) for k, grad in enumerate(grads)]
            return (d_home, dt), grads

        carry, grads = _row_chunks(n, c, chunk, (carry, [gr for _, gr in travellers]))
        return carry, list(zip(blocks, grads, strict=True))

    zeros = varying([jnp.zeros(e.shape, acc_t) for e in embs] + [jnp.zeros((), acc_t)], spec)
    travellers = [((e, st), z) for e, st, z in zip(embs[1:], stats[1:], zeros[1:m], strict=True)]
    (d_home, dt), travellers = _nested(spec, 0, travellers, (zeros[0], zeros[m]), visit)
    grads = [d_home, *[grad for _, grad in travellers]]

    # The positives: -sum_m ct_m / B * l(i, ..., i) per local row.
    w_pos = -jnp.sum(weights)
    for k in range(m):
        rest = [e.astype(acc_t) for a, e in enumerate(embs) if a != k]
        grads[k] = grads[k] + w_pos * s * jnp.prod(jnp.stack(rest), axis=0)
    dt = dt + w_pos * jnp.sum(positive_mip(embs, s))
    return [gr.astype(e.dtype) for gr, e in zip(grads, embs, strict=True)], dt.astype(t.dtype)


_local_shares.defvjp(_local_shares_fwd, _local_shares_bwd)


def symile_ring_body(
    embs, t, *, axes: tuple[str, ...], W: int, chunk_size: int | None = None
) -> jax.Array:
    """Per-device body for ``jax.shard_map``: embs M local ``[b, d]``; t replicated;
    ``chunk_size``: home rows scored per step (None: all b; else it divides b).

    Returns the per-anchor losses ``[M]`` (global, replicated)."""
    spec = make_spec(axes, W, embs[0].shape[0], chunk_size)
    t = jax.lax.pcast(t, axes, to="varying")
    return jax.lax.psum(_local_shares(list(embs), t, spec), axes)


def symile_ring(
    embs: Sequence[jax.Array],
    t: jax.Array,
    mesh: Mesh,
    chunk_size: int | None = None,
    batch_axes: Sequence[str] | str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Symile ``n_squared`` over the device ring of ``mesh``'s batch axes.

    embs: M arrays ``[B, d]`` (rows sharded over the batch axes, resharded if needed;
    B divisible by the W shards); t: scalar log-scale. Returns (loss, per-anchor [M]),
    equal to :func:`multimodal_ssl.losses.symile.symile_n_squared`.
    """
    check_embeddings(embs)
    if mesh is None:
        raise ValueError("symile impl='ring' runs inside jax.shard_map and needs mesh=, got None")
    axes = common.resolve_batch_axes(mesh, batch_axes)
    w = common.ring_size(mesh, axes)
    embs = common.place_batch(mesh, axes, *embs)
    t = jax.device_put(common.check_scalar("t", t), jax.sharding.NamedSharding(mesh, P()))
    spec = P(axes, None)
    fn = jax.shard_map(
        lambda es, tt: symile_ring_body(es, tt, axes=axes, W=w, chunk_size=chunk_size),
        mesh=mesh,
        in_specs=([spec] * len(embs), P()),
        out_specs=P(),
    )
    per_anchor = fn(list(embs), t)
    return jnp.mean(per_anchor), per_anchor
