"""Independent float64 numpy references of the literature objectives (DCL, Symile, GRAM).

Naive loops over rows and candidate tuples, written from the papers' formulas; gradients
derived by hand (and checked against central finite differences in
test_objectives_literature.py). Each returns ``(loss, grads)`` with ``grads`` keyed like
the arguments (``"t"`` for the log-scale).
"""

from __future__ import annotations

import itertools

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z))
    return e / np.sum(e)


def _lse(z: np.ndarray) -> float:
    m = np.max(z)
    return float(m + np.log(np.sum(np.exp(z - m))))


def dcl_reference(x, y, t):
    """DCL: 1/(2B) sum_i [lse_{j!=i} l_ij - l_ii + lse_{j!=i} l_ji - l_ii], l = e^t x y^T."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, s = x.shape[0], np.exp(float(t))
    logits = s * (x @ y.T)
    loss, g = 0.0, np.zeros((n, n))  # g: dloss / dlogits
    for i in range(n):
        others = [j for j in range(n) if j != i]
        row, col = logits[i, others], logits[others, i]
        loss += (_lse(row) - logits[i, i] + _lse(col) - logits[i, i]) / (2 * n)
        g[i, others] += _softmax(row) / (2 * n)
        g[others, i] += _softmax(col) / (2 * n)
        g[i, i] -= 2 / (2 * n)
    grads = {"x": s * g @ y, "y": s * g.T @ x, "t": float(np.sum(g * logits))}
    return loss, grads


def _mip(vectors) -> float:
    return float(np.sum(np.prod(np.stack(vectors), axis=0)))


def symile_reference(embs, t, perms=None):
    """Symile: mean over anchors m of the mean over rows i of the cross-entropy of the
    positive tuple among the candidates. ``perms=None``: every combination of the
    non-anchor rows; else ``perms[m][r]`` shuffles modality r for anchor m (column j is
    ``e_r[perms[m][r][j]]``, the diagonal the positive). Returns (loss, grads) with
    grads ``{"embs": [dE_m], "t": dt}``."""
    embs = [np.asarray(e, np.float64) for e in embs]
    nm, n = len(embs), embs[0].shape[0]
    s = np.exp(float(t))
    loss, grads, dt = 0.0, [np.zeros_like(e) for e in embs], 0.0
    for m in range(nm):
        rest = [r for r in range(nm) if r != m]
        for i in range(n):
            if perms is None:
                tuples = [
                    dict(zip(rest, c, strict=True))
                    for c in itertools.product(range(n), repeat=nm - 1)
                ]
                target = tuples.index(dict.fromkeys(rest, i))
            else:
                tuples = [
                    dict.fromkeys(rest, i) if j == i else {r: perms[m][r][j] for r in rest}
                    for j in range(n)
                ]
                target = i
            rows = [{**c, m: i} for c in tuples]  # modality -> row index
            logits = np.array([s * _mip([embs[r][c[r]] for r in range(nm)]) for c in rows])
            loss += (_lse(logits) - logits[target]) / (nm * n)
            g = _softmax(logits)
            g[target] -= 1.0
            g /= nm * n
            for gc, c, logit in zip(g, rows, logits, strict=True):
                dt += gc * logit
                for r in range(nm):
                    prod = np.prod(np.stack([embs[q][c[q]] for q in range(nm) if q != r]), 0)
                    grads[r][c[r]] += gc * s * prod
    return loss, {"embs": grads, "t": dt}


GRAM_FLOOR = 16 * np.finfo(np.float64).eps  # as multimodal_ssl/losses/gram.py in float64


def gram_reference(anchor, others, t, eps_smooth=0.0, floor=GRAM_FLOOR):
    """GRAM: V_ij = sqrt(max(|det G|, floor)) of [anchor_i, others_j]; logits -e^t V;
    mean of the label-smoothed cross-entropies over rows and over columns. Gradient of V
    by dV/dA = V G^{-1} A (A the k x d matrix of the vectors; V above the floor)."""
    vecs = [np.asarray(anchor, np.float64)] + [np.asarray(o, np.float64) for o in others]
    n, s = vecs[0].shape[0], np.exp(float(t))
    vol = np.zeros((n, n))
    dvol = {}
    for i in range(n):
        for j in range(n):
            a = np.stack([vecs[0][i]] + [v[j] for v in vecs[1:]])
            gram = a @ a.T
            det = abs(np.linalg.det(gram))
            vol[i, j] = np.sqrt(max(det, floor))
            dvol[i, j] = vol[i, j] * np.linalg.solve(gram, a) if det > floor else 0 * a
    logits = -s * vol
    loss, g = 0.0, np.zeros((n, n))
    for axis in (1, 0):
        for i in range(n):
            z = logits[i, :] if axis == 1 else logits[:, i]
            logp = z - _lse(z)
            loss += ((1 - eps_smooth) * -logp[i] - eps_smooth * np.mean(logp)) / (2 * n)
            dz = _softmax(z) - eps_smooth / n
            dz[i] -= 1 - eps_smooth
            if axis == 1:
                g[i, :] += dz / (2 * n)
            else:
                g[:, i] += dz / (2 * n)
    grads = [np.zeros_like(v) for v in vecs]
    for (i, j), dv in dvol.items():
        coef = g[i, j] * -s
        grads[0][i] += coef * dv[0]
        for k in range(1, len(vecs)):
            grads[k][j] += coef * dv[k]
    return loss, {"anchor": grads[0], "others": grads[1:], "t": float(np.sum(g * logits))}
