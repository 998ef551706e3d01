"""Independent float64 numpy reference of the SigLIP and CLIP losses and their gradients.

Gradients are derived by hand from the dense formulas (and checked against central
finite differences in test_losses_dense.py). Each function returns
``(loss, {"x": dx, "y": dy, "t": dt, "b": db})`` (no "b" for softmax).
"""

from __future__ import annotations

import numpy as np


def _logaddexp0(u: np.ndarray) -> np.ndarray:
    """``log(1 + exp(u))`` without overflow."""
    return np.logaddexp(0.0, u)


def _expit(u: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-u))`` without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * u))


def _lse(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def sigmoid_reference(x, y, t, b):
    """SigLIP: ``-1/B sum_ij log sigmoid(z_ij (e^t x_i.y_j + b))``, z = 2I - 1."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    s = np.exp(float(t))
    xy = x @ y.T
    z = 2.0 * np.eye(n) - 1.0
    logits = s * xy + float(b)
    loss = np.sum(_logaddexp0(-z * logits)) / n  # -log sigmoid(u) = log(1 + e^-u)
    g = -z * _expit(-z * logits) / n  # dloss / dlogits
    grads = {"x": s * g @ y, "y": s * g.T @ x, "t": np.sum(g * s * xy), "b": np.sum(g)}
    return loss, grads


def softmax_reference(x, y, t):
    """CLIP: mean of the row-wise and column-wise cross-entropies of ``e^t x @ y.T``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    s = np.exp(float(t))
    logits = s * (x @ y.T)
    row, col, diag = _lse(logits, 1), _lse(logits, 0), np.diag(logits)
    loss = 0.5 * (np.mean(row - diag) + np.mean(col - diag))
    p_row = np.exp(logits - row[:, None])
    p_col = np.exp(logits - col[None, :])
    g = (p_row + p_col - 2.0 * np.eye(n)) / (2 * n)
    grads = {"x": s * g @ y, "y": s * g.T @ x, "t": np.sum(g * logits)}
    return loss, grads


def finite_difference(fn, args: dict[str, np.ndarray], eps: float = 1e-6) -> dict:
    """Central differences of the scalar ``fn(**args)`` w.r.t. every entry of every arg."""
    grads = {}
    for name, value in args.items():
        value = np.asarray(value, np.float64)
        grad = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            hi, lo = value.copy(), value.copy()
            hi[idx] += eps
            lo[idx] -= eps
            grad[idx] = (fn(**{**args, name: hi}) - fn(**{**args, name: lo})) / (2 * eps)
        grads[name] = grad
    return grads


def embeddings(n: int, d: int, seed: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Random L2-normalised ``[n, d]`` image / text embeddings, positives correlated."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x + rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(dtype), y.astype(dtype)


def integer_embeddings(n: int, d: int, seed: int, high: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued f32 ``[n, d]`` embeddings (positives correlated).

    Every dot product is an integer below 2**24, so f32 logits (with scale ``exp(0) = 1``)
    are exact: comparisons against the float64 reference then measure only the loss
    algorithm, not the f32 rounding of ``x . y`` (which at |logits| ~ 1e3 alone moves the
    softmax gradients by ~1e-5). With ``high=16, d=8`` |logits| reach ~1e3.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(-high, high + 1, size=(n, d))
    y = np.clip(x + rng.integers(-3, 4, size=(n, d)), -high, high)
    return x.astype(np.float32), y.astype(np.float32)
