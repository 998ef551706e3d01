"""Self-distillation losses of SigLIP 2 (Tschannen et al. 2025, arXiv 2502.14786): the
local-to-global consistency of SILC (Naeem et al. 2023) and the masked prediction of
TIPS (Maninis et al. 2024), both DINO/iBOT-style cross-entropies between a teacher's
and a student's softmax over ``K`` prototypes (the logits of a projection head).

With teacher logits ``t`` [K], student logits ``s`` [K], the teacher's running center
``c`` [K] and temperatures ``tau_t`` (sharpening) < ``tau_s``::

    p_t = softmax((t - c) / tau_t)          (no gradient: stop_gradient)
    H(t, s) = -sum_k p_t[k] * log_softmax(s / tau_s)[k]

* :func:`local_global_loss`: teacher on the global view [B, K], student on ``n`` local
  crops [B, n, K]; ``L = 1/(B n) sum_{b, i} H(t_b, s_{b,i})``.
* :func:`masked_patch_loss`: teacher patch logits [B, L, K] on the unmasked image,
  student's at the same positions with the masked patches replaced by a mask token;
  ``L = sum_{b,l} m_bl H(t_bl, s_bl) / sum_{b,l} m_bl`` over the masked positions
  (``m`` bool [B, L]; with the same number masked per image this is iBOT's mean of the
  per-image means).
* :func:`update_center`: ``c <- mu c + (1 - mu) mean(t)`` over all rows (and patches);
  :func:`ema`: ``teacher <- m teacher + (1 - m) student``, leaf by leaf.

Rows may be sharded over the batch axes (the means are global; XLA reduces).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _teacher_probs(t: jax.Array, center: jax.Array, tau_t: float) -> jax.Array:
    t = jax.lax.stop_gradient(t).astype(jnp.promote_types(t.dtype, jnp.float32))
    return jax.nn.softmax((t - jax.lax.stop_gradient(center)) / tau_t, axis=-1)


def cross_entropy(
    t: jax.Array, s: jax.Array, center: jax.Array, tau_t: float, tau_s: float
) -> jax.Array:
    """``H(t, s)`` of the module docstring per row: t, s [..., K] (broadcastable),
    center [K] -> [...]. No gradient flows to ``t`` or ``center``."""
    p_t = _teacher_probs(t, center, tau_t)
    log_p_s = jax.nn.log_softmax(s.astype(p_t.dtype) / tau_s, axis=-1)
    return -jnp.sum(p_t * log_p_s, axis=-1)


def local_global_loss(
    student_local: jax.Array,
    teacher_global: jax.Array,
    center: jax.Array,
    tau_t: float,
    tau_s: float,
) -> jax.Array:
    """SILC: student_local [B, n, K], teacher_global [B, K], center [K] -> scalar."""
    if student_local.ndim != 3 or teacher_global.shape != (
        student_local.shape[0],
        student_local.shape[2],
    ):
        raise ValueError(
            f"local_global_loss: expected student [B, n, K] and teacher [B, K], got "
            f"{student_local.shape} and {teacher_global.shape}"
        )
    return jnp.mean(cross_entropy(teacher_global[:, None], student_local, center, tau_t, tau_s))


def masked_patch_loss(
    student_patches: jax.Array,
    teacher_patches: jax.Array,
    mask: jax.Array,
    center: jax.Array,
    tau_t: float,
    tau_s: float,
) -> jax.Array:
    """TIPS / iBOT: student_patches, teacher_patches [B, L, K], mask bool [B, L] (True:
    masked in the student's input), center [K] -> scalar (0 when nothing is masked)."""
    if student_patches.shape != teacher_patches.shape or mask.shape != student_patches.shape[:2]:
        raise ValueError(
            f"masked_patch_loss: expected student and teacher [B, L, K] and mask [B, L], got "
            f"{student_patches.shape}, {teacher_patches.shape} and {mask.shape}"
        )
    h = cross_entropy(teacher_patches, student_patches, center, tau_t, tau_s)
    count = jnp.maximum(jnp.sum(mask), 1).astype(h.dtype)
    return jnp.sum(jnp.where(mask, h, 0)) / count


def random_patch_mask(rng: jax.Array, batch: int, length: int, ratio: float) -> jax.Array:
    """bool [batch, length] with exactly ``round(ratio * length)`` (at least 1) True per
    row, uniformly placed."""
    n_mask = max(1, round(ratio * length))
    noise = jax.random.uniform(rng, (batch, length))
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return ranks < n_mask


def update_center(center: jax.Array, teacher: jax.Array, momentum: float) -> jax.Array:
    """DINO centering: center [K], teacher logits [..., K] -> the new center [K]."""
    mean = jnp.mean(teacher.reshape(-1, teacher.shape[-1]).astype(center.dtype), axis=0)
    return momentum * center + (1 - momentum) * jax.lax.stop_gradient(mean)


def ema(teacher: Any, student: Any, momentum: float) -> Any:
    """``momentum * teacher + (1 - momentum) * student`` leaf by leaf (same trees)."""
    return jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s, teacher, student)
