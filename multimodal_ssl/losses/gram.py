"""GRAM (Cicchetti et al., ICLR 2025, "Gramian Multimodal Representation Learning and
Alignment", arXiv 2412.11959; github:ispamm/GRAM ``utils/volume.py``, ``model/gram.py``).

k >= 2 modalities: an anchor ``a: [B, d]`` and the others ``o_1..o_{k-1}: [B, d]``. The
dissimilarity of anchor row i and data row j is the volume of the parallelotope spanned by
``a_i, o_1[j], ..., o_{k-1}[j]``: ``V_ij = sqrt(|det G_ij|)`` with ``G_ij`` the ``k x k``
Gram matrix of those vectors. With ``s = exp(t)`` (the paper's ``1/tau``) the logits
are ``-s V`` and the loss averages the two cross-entropies with the matching rows as
targets (D2A over the anchors of a data row, A2D over the data rows of an anchor)::

    L = 1/(2B) sum_i [ CE_eps(-s V[i, :], i) + CE_eps(-s V[:, i], i) ]
    CE_eps(z, i) = -(1 - eps) log softmax(z)_i - eps/B sum_j log softmax(z)_j

``eps`` is label smoothing (the reference code uses 0.1; the paper's formula is eps=0).

Numerics: ``det G`` is the Leibniz sum over the k! permutations of products of Gram
entries, a polynomial whose gradient (the adjugate) stays finite even for a singular
``G`` (inverse- or LU-based determinants divide by it). ``V = sqrt(max(|det G|, 16 e))``
with ``e`` the accumulation dtype's epsilon: ``det G`` formed from dot products of unit
vectors carries a rounding error of a few ``e``, so below that floor (nearly collinear
vectors, the aligned optimum) the volume is noise; it is reported as ``4 sqrt(e)``
(1.4e-3 in f32, 6e-8 in f64) with a zero, not infinite or noisy, gradient. Memory: the
``k (k + 1) / 2`` Gram entries ``[B, B]`` (dense, rows sharded like the anchor; no ring).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from multimodal_ssl.losses.common import acc_dtype, replicate_rows
from multimodal_ssl.losses.pairwise import _diagonal_mask

DET_FLOOR = 16  # det G below DET_FLOOR * eps is rounding noise (module docstring)


def _permutations(k: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """All permutations of ``range(k)`` and their signs."""
    perms = list(itertools.permutations(range(k)))
    pairs = list(itertools.combinations(range(k), 2))
    signs = [(-1) ** sum(p[a] > p[b] for a, b in pairs) for p in perms]
    return perms, signs


def leibniz_det(g: dict[tuple[int, int], jax.Array], k: int) -> jax.Array:
    """Determinant ``sum_p sign(p) prod_r g[r, p(r)]`` (Leibniz; k! terms, k <= 6 advised)
    of the ``k x k`` matrices given entry-wise: ``g[r, c]`` arrays of one shape."""
    perms, signs = _permutations(k)
    total = 0.0
    for perm, sign in zip(perms, signs, strict=True):
        term = g[0, perm[0]]
        for r in range(1, k):
            term = term * g[r, perm[r]]
        total = total + sign * term
    return total


def gram_volume(anchor: jax.Array, others: Sequence[jax.Array]) -> jax.Array:
    """``V[i, j] = sqrt(max(|det G(anchor_i, others[.][j])|, 16 eps))``: ``[B_a, d]`` and
    k - 1 arrays ``[B, d]`` -> ``[B_a, B]`` in the accumulation dtype (>= f32)."""
    acc = acc_dtype(anchor)  # rows of the anchor keep their sharding, the others gather
    vecs = [anchor.astype(acc), *[replicate_rows(o).astype(acc) for o in others]]
    k = len(vecs)
    entries = {(0, q): vecs[0] @ vecs[q].T for q in range(1, k)}  # anchor . other [B_a, B]
    zeros = jnp.zeros_like(entries[0, 1])  # broadcasts keep the anchor's row sharding
    entries[0, 0] = zeros + jnp.sum(vecs[0] * vecs[0], axis=1)[:, None]
    for p, q in itertools.combinations_with_replacement(range(1, k), 2):
        entries[p, q] = zeros + jnp.sum(vecs[p] * vecs[q], axis=1)[None, :]  # same data row
    for p, q in list(entries):
        entries[q, p] = entries[p, q]
    det = jnp.abs(leibniz_det(entries, k))
    return jnp.sqrt(jnp.maximum(det, DET_FLOOR * jnp.finfo(acc).eps))


def _smoothed_ce(logits: jax.Array, axis: int, eps: float) -> jax.Array:
    """Mean over the other axis of the label-smoothed CE with the diagonal as targets."""
    logp = logits - jax.nn.logsumexp(logits, axis=axis, keepdims=True)
    nll = -jnp.sum(jnp.where(_diagonal_mask(logp), logp, 0), axis=axis)
    if eps:
        nll = (1 - eps) * nll - eps * jnp.mean(logp, axis=axis)
    return jnp.mean(nll)


def gram_loss(
    anchor: jax.Array, others: Sequence[jax.Array], t: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """GRAM contrastive loss (module docstring). anchor and each of ``others``: ``[B, d]``
    (k - 1 >= 1 others); t: scalar log-scale ``log(1/tau)``. Returns a scalar."""
    arrays = [anchor, *others]
    if not others:
        raise ValueError("gram needs the anchor and at least one other modality")
    for e in arrays:
        if e.ndim != 2 or e.shape != anchor.shape:
            raise ValueError(
                f"gram embeddings must be [batch, dim] of one shape, got "
                f"{[a.shape for a in arrays]}"
            )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    volume = gram_volume(anchor, others)
    logits = -jnp.exp(jnp.asarray(t).astype(volume.dtype)) * volume
    return (_smoothed_ce(logits, 1, label_smoothing) + _smoothed_ce(logits, 0, label_smoothing)) / 2
