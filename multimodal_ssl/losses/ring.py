"""The device ring shared by the ring losses: block exchange and intra-block tiling.

Inside ``jax.shard_map`` over the batch axes (flattened to one ring of W devices), device
``k`` owns image rows ``x_k`` and text rows ``y_k`` (``b = B / W`` each). ``ring_visit``
lets it score its own text block and then every other device's, exactly once each:

* round 0 scores the own block (the one with the positive pairs);
* rounds ``1..(W-1)//2`` receive a block from each side (one travelling right, one
  travelling left, ``ppermute`` by +1 / -1), the next pair of transfers issued before the
  current pair is scored so communication can overlap compute;
* for even W one more right hop brings the antipodal block ``k - W/2`` (both directions
  would deliver the same block there; it is scored once).

So there are ``ceil((W-1)/2)`` rounds. Each travelling block carries an accumulator
(column log-sum-exp state, or its gradient buffer in a backward pass) that is updated by
every device it visits and sent home at the end with one ``ppermute``; the right-going
copy starts from the own block's accumulator, so no separate home copy is kept. Visits
run strictly one after another, so per-device memory is about ten ``[b, d]`` buffers
plus one tile's scores, independent of W.

``tile_loop`` scores a ``b x b`` block as ``c x c`` tiles in a ``fori_loop`` so the
score matrix in flight is ``O(c^2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Tree = Any


class RingSpec(NamedTuple):
    """Static description of one ring loss call (hashable; a custom_vjp nondiff arg).

    axes: batch mesh axes forming the ring; W: their total size; chunk: tile size ``c``
    (divides the local batch); batch: the global batch ``B = b * W``.
    """

    axes: tuple[str, ...]
    W: int
    chunk: int
    batch: int


def make_spec(axes: tuple[str, ...], w: int, local_batch: int, chunk_size: int | None) -> RingSpec:
    """Builds a RingSpec; ``chunk_size`` None or >= the local batch means one tile.

    Raises ValueError when ``chunk_size`` is smaller than, but does not divide, the local
    batch ``b = B / W``.
    """
    chunk = local_batch if chunk_size is None else min(chunk_size, local_batch)
    if local_batch % chunk:
        raise ValueError(
            f"chunk_size {chunk_size} must divide the local batch {local_batch} "
            f"(global batch {local_batch * w} over {w} devices)"
        )
    return RingSpec(axes=axes, W=w, chunk=chunk, batch=local_batch * w)


def varying(tree: Tree, spec: RingSpec) -> Tree:
    """Marks freshly created (device-invariant) arrays as varying over the ring axes."""
    return jax.tree.map(lambda a: jax.lax.pcast(a, spec.axes, to="varying"), tree)


def shift(tree: Tree, spec: RingSpec, k: int) -> Tree:
    """Sends every leaf of ``tree`` from device ``i`` to device ``i + k`` (mod W)."""
    if k % spec.W == 0:
        return tree
    perm = [(i, (i + k) % spec.W) for i in range(spec.W)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, spec.axes, perm), tree)


def _pair(right: Tree, left: Tree) -> Tree:
    return jax.tree.map(lambda a, b: jnp.stack([a, b]), right, left)


def _half(pair: Tree, k: Any) -> Tree:
    return jax.tree.map(lambda p: p[k], pair)


def _shift_pair(pair: Tree, spec: RingSpec) -> Tree:
    """Sends the first half of a pair right (+1) and the second half left (-1)."""
    return _pair(shift(_half(pair, 0), spec, 1), shift(_half(pair, 1), spec, -1))


def ring_visit(
    spec: RingSpec,
    visit: Callable[[Tree, Tree, Tree, bool], tuple[Tree, Tree]],
    state: Tree,
    block: Tree,
    acc_init: Tree,
    merge: Callable[[Tree, Tree], Tree],
) -> tuple[Tree, Tree]:
    """Scores the own text block, then every other device's, once each.

    visit(state, block, acc, own) -> (state, acc): scores one text block against the local
    rows; ``own`` (static) is True only for the device's own block. ``state`` stays on the
    device (row accumulators); ``acc`` belongs to the block (starts at ``acc_init``).
    block: pytree of text-side arrays (sent ahead of use); acc_init: varying pytree.
    merge(acc, acc) combines two accumulators of the same block.
    Returns the final state and the merged accumulator of the own block, back home.

    The two blocks of a round (and their accumulators) are stacked on a leading axis of 2
    and visited in a 2-step loop, so visits run strictly one after another and only one
    block's scores are live at a time, whatever order the scheduler picks.
    """

    def visit_pair(state, blocks, accs):
        def step(k, carry):
            state, accs = carry
            state, acc = visit(state, _half(blocks, k), _half(accs, k), False)
            return state, jax.tree.map(lambda p, a: p.at[k].set(a), accs, acc)

        return jax.lax.fori_loop(0, 2, step, (state, accs))

    state, acc = visit(state, block, acc_init, True)
    w, rounds = spec.W, (spec.W - 1) // 2
    if rounds:
        blocks = _pair(shift(block, spec, 1), shift(block, spec, -1))

        def round_(_, carry):
            state, blocks, accs = carry
            next_blocks = _shift_pair(blocks, spec)
            state, accs = visit_pair(state, blocks, accs)
            return state, next_blocks, _shift_pair(accs, spec)

        # The own block's accumulator travels right with the block's first copy.
        carry = (state, blocks, _pair(shift(acc, spec, 1), acc_init))
        state, blocks, accs = jax.lax.fori_loop(0, rounds - 1, round_, carry)
        antipode = shift(_half(blocks, 0), spec, 1) if w % 2 == 0 else None
        state, accs = visit_pair(state, blocks, accs)
        acc, home_l = _half(accs, 0), shift(_half(accs, 1), spec, rounds)
    if w % 2 == 0:
        # The antipodal block k - W/2, scored once; on W == 2 it is the only other block.
        right = antipode if rounds else shift(block, spec, 1)
        state, acc = visit(state, right, shift(acc, spec, 1), False)
    if w > 1:
        acc = shift(acc, spec, -(w // 2))  # home from k + W/2 (even W) or k + (W-1)/2
    if rounds:
        acc = merge(acc, home_l)
    return state, acc


def tile_loop(n: int, c: int, fn: Callable[[Tree, Any, Any], Tree], carry: Tree) -> Tree:
    """Calls ``fn(carry, i0, j0)`` for every ``c x c`` tile of an ``n x n`` block.

    ``i0``/``j0`` are the tile's first row / column (traced inside the loop). A single
    tile (``c == n``) is scored without a loop.
    """
    tiles = n // c
    if tiles == 1:
        return fn(carry, 0, 0)

    def body(k, carry):
        return fn(carry, (k // tiles) * c, (k % tiles) * c)

    return jax.lax.fori_loop(0, tiles * tiles, body, carry)


def rows(a: jax.Array, start: Any, size: int) -> jax.Array:
    """``a[start:start + size]`` along axis 0 (start may be traced)."""
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)


def add_rows(a: jax.Array, start: Any, update: jax.Array) -> jax.Array:
    """``a[start:start + len(update)] += update`` along axis 0 (start may be traced)."""
    cur = rows(a, start, update.shape[0])
    return jax.lax.dynamic_update_slice_in_dim(a, cur + update, start, axis=0)


def tile_scores(
    x: jax.Array, y: jax.Array, scale: jax.Array, i0: Any, j0: Any, c: int, own: bool
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """One tile's operands and scaled scores.

    x, y: ``[b, d]`` image / text rows (any float dtype); scale: ``s`` in the accumulation
    dtype. Returns ``s * x[i0:i0+c]`` and ``y[j0:j0+c]`` as ``[c, d]`` in the accumulation
    dtype, the scores ``s * x_i . y_j`` ``[c, c]`` and, for the own block, the positives
    mask ``[c, c]`` (``i0 + r == j0 + q``), else None.

    The scale is folded into the ``[c, d]`` operand, not applied to the dot's output, so
    every consumer of a score sees the same rounded value: XLA may otherwise fuse
    ``s * xy - m`` into an FMA in one fusion and round ``s * xy`` in another, which at
    |logits| ~ 1e3 puts ~1e-5 errors into the softmax probabilities.
    """
    xsi = scale * rows(x, i0, c).astype(scale.dtype)
    yj = rows(y, j0, c).astype(scale.dtype)
    scores = jnp.einsum("id,jd->ij", xsi, yj)
    pos = None
    if own:
        r = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
        q = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
        pos = (r + i0) == (q + j0)
    return xsi, yj, scores, pos
