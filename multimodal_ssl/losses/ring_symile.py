"""Symile with every combination of non-anchor rows (``negatives="n_squared"``) over a ring.

Formula: :mod:`multimodal_ssl.losses.symile`. The ``[B]*M`` score tensor is never formed:
inside ``jax.shard_map`` over the batch axes (W devices, ``b = B / W`` local rows each),
device k keeps its block of modality 1 at home and meets every tuple of blocks of
modalities 2..M through M-1 nested unidirectional rings: the block of modality 2 makes
one full turn (W hops, ``ppermute`` by +1); during each of its stops the block of
modality 3 makes a full turn, and so on. Every device thus scores each of the ``W^M``
block tuples of its own modality-1 rows exactly once, as a ``[b]*M`` tile, and every
travelling block comes home after its turn.

Each modality needs a log-sum-exp over all axes but its own: an online ``(max, sum)``
accumulator per row travels with each block (modality 1's stays home); the positives
``l(i, ..., i)`` are local. The custom VJP saves the embeddings, ``t`` and the final
``(max, sum)`` pairs and recomputes each tile; a gradient buffer travels with each block.
Per-device memory: O(M * b * d + b^M), independent of W; compute per device
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
from multimodal_ssl.losses.ring import RingSpec, shift, varying
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


def _forward(embs, t, spec: RingSpec):
    """Per-anchor local loss shares ``[M]`` and the per-modality ``(max, sum)`` ``[b]``."""
    acc_t = jnp.promote_types(embs[0].dtype, jnp.float32)
    s, n = jnp.exp(t.astype(acc_t)), embs[0].shape[0]
    empty = varying((jnp.full((n,), -jnp.inf, acc_t), jnp.zeros((n,), acc_t)), spec)

    def visit(home, travellers):
        scores = mip_tensor([embs[0], *[b for b, _ in travellers]], s)
        home = _online_update(home, scores, 0)
        travellers = [(b, _online_update(a, scores, k + 1)) for k, (b, a) in enumerate(travellers)]
        return home, travellers

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
    s, m = jnp.exp(t.astype(acc_t)), len(embs)
    weights = ct.astype(acc_t) / spec.batch  # [M]
    letters = string.ascii_letters[:m]

    def grad_of(k, g, operands):
        """d sum(g * l) / d operand k: contract g with every other operand over its axis."""
        lhs = ",".join([letters, *[f"{letters[a]}z" for a in _others(m, k)]])
        return jnp.einsum(f"{lhs}->{letters[k]}z", g, *[operands[a] for a in _others(m, k)])

    def visit(carry, travellers):
        d_home, dt = carry
        blocks = [b for b, _ in travellers]
        scores = mip_tensor([embs[0], *[b for b, _ in blocks]], s)
        all_stats = [stats[0], *[st for _, st in blocks]]
        g = 0.0
        for k, (mx, sm) in enumerate(all_stats):
            shape = [1] * m
            shape[k] = -1
            g = g + weights[k] * jnp.exp(scores - mx.reshape(shape)) / sm.reshape(shape)
        operands = [s * embs[0].astype(acc_t), *[b.astype(acc_t) for b, _ in blocks]]
        d_first = grad_of(0, g, operands)
        d_home = d_home + s * d_first
        dt = dt + jnp.sum(d_first * operands[0])
        travellers = [
            (blk, grad + grad_of(k + 1, g, operands)) for k, (blk, grad) in enumerate(travellers)
        ]
        return (d_home, dt), travellers

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


def symile_ring_body(embs, t, *, axes: tuple[str, ...], W: int) -> jax.Array:
    """Per-device body for ``jax.shard_map``: embs M local ``[b, d]``; t replicated.

    Returns the per-anchor losses ``[M]`` (global, replicated)."""
    spec = RingSpec(axes=axes, W=W, chunk=embs[0].shape[0], batch=embs[0].shape[0] * W)
    t = jax.lax.pcast(t, axes, to="varying")
    return jax.lax.psum(_local_shares(list(embs), t, spec), axes)


def symile_ring(
    embs: Sequence[jax.Array],
    t: jax.Array,
    mesh: Mesh,
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
        lambda es, tt: symile_ring_body(es, tt, axes=axes, W=w),
        mesh=mesh,
        in_specs=([spec] * len(embs), P()),
        out_specs=P(),
    )
    per_anchor = fn(list(embs), t)
    return jnp.mean(per_anchor), per_anchor
