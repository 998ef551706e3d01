"""Symile (Saporta et al., NeurIPS 2024, "Contrasting with Symile", arXiv 2411.01053).

M >= 2 modalities, embeddings ``e_1..e_M: [B, d]`` (row i of each is one example). The
score of a tuple of rows is their multilinear inner product (MIP), times ``s = exp(t)``::

    l(i_1, ..., i_M) = s * sum_d e_1[i_1, d] * e_2[i_2, d] * ... * e_M[i_M, d]

Each modality ``m`` is the anchor in turn: row ``i`` of ``e_m`` must pick its positive
tuple (every other modality at row ``i``) among candidates formed from the non-anchor
modalities; the loss is the mean over anchors of the mean cross-entropy over rows::

    L = 1/M sum_m 1/B sum_i [ log sum_{c in C_m(i)} exp l(c) - l(i, ..., i) ]

The candidate sets (``negatives``, as github:rajesh-lab/symile ``negative_sampling``):

* ``"n_squared"`` (O(n^{M-1}) negatives): every combination of the non-anchor
  modalities' rows, ``C_m(i) = {(j_1..j_M): j_m = i}`` (B^{M-1} candidates; B^2 for three
  modalities). One score tensor ``[B]*M`` serves all anchors: anchor m takes the
  log-sum-exp over every axis but m. Dense here (``B^M`` memory); the device ring
  (:mod:`multimodal_ssl.losses.ring_symile`) has memory independent of the device count.
* ``"n"`` (O(n) negatives): for anchor m, each non-anchor modality r is shuffled by its
  own permutation ``perm[m, r]``; column j is the tuple ``e_r[perm[m, r][j]]`` (r != m)
  and the diagonal is replaced by the positive MIP. ``C_m(i)`` = the positive and the
  B - 1 shuffled columns j != i.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from multimodal_ssl.losses.common import acc_dtype, replicate_rows
from multimodal_ssl.losses.pairwise import _diagonal_mask

NEGATIVES = ("n", "n_squared")


def check_embeddings(embs: Sequence[jax.Array]) -> None:
    """Raises ValueError unless ``embs`` are >= 2 floating ``[B, d]`` arrays of one shape."""
    if len(embs) < 2:
        raise ValueError(f"symile needs at least 2 modalities, got {len(embs)}")
    for k, e in enumerate(embs):
        if e.ndim != 2 or not jnp.issubdtype(e.dtype, jnp.floating):
            raise ValueError(
                f"embedding {k} must be floating [batch, dim], got {e.shape} {e.dtype}"
            )
        if e.shape != embs[0].shape:
            raise ValueError(f"embeddings must share one shape, got {[x.shape for x in embs]}")


def mip_tensor(embs: Sequence[jax.Array], scale: jax.Array) -> jax.Array:
    """``scale * MIP`` of every tuple of rows: ``[n_1, d] x ... x [n_M, d] -> [n_1, ..., n_M]``.

    The scale is folded into the first operand (the same rounding in every consumer). The
    result keeps the first operand's row sharding (the others are replicated).
    """
    letters = string.ascii_letters[: len(embs)]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    first = scale * embs[0].astype(scale.dtype)
    return jnp.einsum(spec, first, *[replicate_rows(e).astype(scale.dtype) for e in embs[1:]])


def positive_mip(embs: Sequence[jax.Array], scale: jax.Array) -> jax.Array:
    """``scale * sum_d prod_m e_m[i, d]``: the positives ``[n]``."""
    prod = scale * embs[0].astype(scale.dtype)
    for e in embs[1:]:
        prod = prod * e.astype(scale.dtype)
    return jnp.sum(prod, axis=1)


def symile_n_squared(embs: Sequence[jax.Array], t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dense Symile with every combination of non-anchor rows as candidates.

    embs: M arrays ``[B, d]``; t: scalar log-scale. Returns (loss, per-anchor losses [M]).
    """
    check_embeddings(embs)
    s = jnp.exp(jnp.asarray(t).astype(acc_dtype(embs[0])))
    scores, pos, m = mip_tensor(embs, s), positive_mip(embs, s), len(embs)
    per_anchor = jnp.stack(
        [
            jnp.mean(jax.nn.logsumexp(scores, axis=tuple(a for a in range(m) if a != k)) - pos)
            for k in range(m)
        ]
    )
    return jnp.mean(per_anchor), per_anchor


def shuffle_permutations(rng: jax.Array, num_modalities: int, batch: int) -> jax.Array:
    """Independent permutations ``[M, M, B]`` i32: ``perm[m, r]`` shuffles modality r when
    m is the anchor (``perm[m, m]`` is unused)."""
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32), (num_modalities**2, batch))
    perms = jax.random.permutation(rng, rows, axis=1, independent=True)
    return perms.reshape(num_modalities, num_modalities, batch)


def symile_n(
    embs: Sequence[jax.Array], t: jax.Array, perms: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Dense Symile with O(n) shuffled negatives (module docstring).

    embs: M arrays ``[B, d]``; t: scalar log-scale; perms: ``[M, M, B]`` int
    (:func:`shuffle_permutations`). Returns (loss, per-anchor losses [M]).
    """
    check_embeddings(embs)
    m, n = len(embs), embs[0].shape[0]
    if perms.shape != (m, m, n):
        raise ValueError(f"perms must be [M, M, B] = {(m, m, n)}, got {perms.shape}")
    acc = acc_dtype(embs[0])
    s = jnp.exp(jnp.asarray(t).astype(acc))
    pos = positive_mip(embs, s)
    losses = []
    for k in range(m):
        shuffled = jnp.ones(embs[0].shape, acc)  # the shuffled products: replicated
        for r in range(m):
            if r != k:
                # Row j of e_r[perm] as a one-hot product: a matmul (and its transpose in
                # the backward pass), not a gather / scatter.
                shuffle = jax.nn.one_hot(perms[k, r], n, dtype=acc)
                shuffled = shuffled * (shuffle @ replicate_rows(embs[r]).astype(acc))
        logits = (s * embs[k].astype(acc)) @ shuffled.T  # [B, B], rows sharded as e_k
        logits = jnp.where(_diagonal_mask(logits), pos[:, None], logits)
        losses.append(jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos))
    per_anchor = jnp.stack(losses)
    return jnp.mean(per_anchor), per_anchor
