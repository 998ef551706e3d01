"""Objectives registry (multimodal_ssl/losses/objectives.py) and the masked dense losses.

Values and gradients are checked against the independent float64 numpy reference of
tests/loss_reference.py (one reference call per modality pair, with that pair's t / b)
and, for masks on one modality only, against a naive numpy loop over (i, j) pairs that
follows the formulas of the masked.py docstring.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loss_reference import finite_difference, sigmoid_reference, softmax_reference

from multimodal_ssl.losses.objectives import (
    OBJECTIVES,
    Sigmoid,
    Softmax,
    make_objective,
    objective_config,
)

MODS = ("image", "text", "audio")
ANCHOR_PAIRS = [("image", "audio"), ("image", "text")]  # "anchor:image", sorted
SCALARS = {"sigmoid": ("t", "b"), "softmax": ("t",)}
T_LARGE = math.log(1000.0)  # unit-norm embeddings: |logits| up to ~1e3
# Per-pair (t, b) of the value tests: "extreme" has |logits| ~ 1e3 and a bias of 900.
SCALES = {
    "moderate": {("image", "audio"): (math.log(10.0), -10.0), ("image", "text"): (0.5, -2.0)},
    "extreme": {("image", "audio"): (T_LARGE, -5.0), ("image", "text"): (T_LARGE, 900.0)},
}


def _embeddings(n, d, seed, dtype=np.float64, mods=MODS):
    """L2-normalised ``{modality: [n, d]}``, every modality correlated with a shared base."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    out = {}
    for m in mods:
        e = base + rng.normal(size=(n, d))
        out[m] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(dtype)
    return out


def _reference(name, x, y, t, b):
    if name == "sigmoid":
        return sigmoid_reference(x, y, t, b)
    return softmax_reference(x, y, t)


def _params(objective, name, scales, dtype):
    """Params with each pair's own (t, b) from ``scales``; shared: those of the first pair."""
    params = {}
    for pair in objective.pairs:
        t, b = scales[pair if not objective.shared else objective.pairs[0]]
        for s, v in zip(("t", "b"), (t, b), strict=True):
            if s in SCALARS[name]:
                params[objective.param_name(s, pair)] = np.asarray(v, dtype)
    return params


def _value_and_grad(objective, embeddings, params, **kw):
    """Jitted ``(loss, metrics), (d embeddings, d params)``."""

    def fn(e, p):
        return objective(e, p, **kw)

    jitted = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
    return jitted(
        {k: jnp.asarray(v) for k, v in embeddings.items()},
        {k: jnp.asarray(v) for k, v in params.items()},
    )


def _close(actual, expected, tol, msg=""):
    expected = np.asarray(expected, np.float64)
    atol = tol * max(np.abs(expected).max(), 1e-6)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=tol, atol=atol, err_msg=msg
    )


# ------------------------------------------------------------------ params and metrics


def test_registry_and_defaults():
    assert OBJECTIVES["sigmoid"] is Sigmoid and OBJECTIVES["softmax"] is Softmax
    sig, soft = objective_config("sigmoid"), objective_config("softmax")
    assert sig.name == "sigmoid" and soft.name == "softmax"
    for cfg in (sig, soft):
        assert cfg.impl == "global" and cfg.pairs == "image-text" and cfg.shared is False
        assert cfg.chunk_size is None
        assert cfg.t_init == pytest.approx(math.log(10.0))
    assert sig.b_init == -10.0 and "b_init" not in soft
    params = make_objective(sig, ("image", "text")).init_params()
    np.testing.assert_allclose(params["t"], math.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(params["b"], -10.0)


@pytest.mark.parametrize(
    "name, modalities, overrides, expected",
    [
        ("sigmoid", ("image", "text"), {}, {"t": 1.5, "b": -3.0}),
        ("softmax", ("image", "text"), {}, {"t": 1.5}),
        ("sigmoid", MODS, {"pairs": "image-audio"}, {"t": 1.5, "b": -3.0}),
        ("sigmoid", MODS, {"pairs": "all", "shared": True}, {"t": 1.5, "b": -3.0}),
        ("softmax", MODS, {"pairs": "anchor:image", "shared": True}, {"t": 1.5}),
        (
            "sigmoid",
            MODS,
            {"pairs": "anchor:image"},
            {
                "t_image_audio": 1.5,
                "b_image_audio": -3.0,
                "t_image_text": 1.5,
                "b_image_text": -3.0,
            },
        ),
        (
            "softmax",
            MODS,
            {"pairs": "text-audio,image-text"},
            {"t_text_audio": 1.5, "t_image_text": 1.5},
        ),
    ],
    ids=["sig-one", "soft-one", "sig-one-of-3", "sig-shared", "soft-shared", "sig-pp", "soft-pp"],
)
def test_param_names_and_init(name, modalities, overrides, expected):
    inits = {"t_init": 1.5, **({"b_init": -3.0} if name == "sigmoid" else {})}
    objective = make_objective(objective_config(name, **inits, **overrides), modalities)
    params = objective.init_params()
    assert set(params) == set(expected)
    for k, v in expected.items():
        assert params[k].shape == () and params[k].dtype == jnp.float32, k
        np.testing.assert_allclose(params[k], v, rtol=1e-7, err_msg=k)


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("sigmoid", {"pairs": "image-text"}, {"train/loss/image_text", "train/t", "train/b"}),
        (
            "sigmoid",
            {"pairs": "anchor:image", "shared": True},
            {"train/loss/image_audio", "train/loss/image_text", "train/t", "train/b"},
        ),
        (
            "sigmoid",
            {"pairs": "anchor:image"},
            {
                "train/loss/image_audio",
                "train/loss/image_text",
                "train/t/image_audio",
                "train/t/image_text",
                "train/b/image_audio",
                "train/b/image_text",
            },
        ),
        ("softmax", {"pairs": "text-image"}, {"train/loss/text_image", "train/t"}),
        (
            "softmax",
            {"pairs": "anchor:image"},
            {
                "train/loss/image_audio",
                "train/loss/image_text",
                "train/t/image_audio",
                "train/t/image_text",
            },
        ),
    ],
    ids=["sig-one", "sig-shared", "sig-pp", "soft-one", "soft-pp"],
)
def test_metric_names_and_values(name, overrides, expected):
    objective = make_objective(objective_config(name, **overrides), MODS)
    emb = _embeddings(6, 4, seed=3, dtype=np.float32)
    params = {
        k: jnp.asarray(0.1 * i - 1.0, jnp.float32) for i, k in enumerate(objective.init_params())
    }
    loss, metrics = objective(emb, params)
    assert set(metrics) == expected
    pair_losses = [metrics[f"train/loss/{a}_{b}"] for a, b in objective.pairs]
    np.testing.assert_allclose(loss, np.mean(pair_losses), rtol=1e-6)
    for a, b in objective.pairs:
        for s in SCALARS[name]:
            key = f"train/{s}" if objective.shared else f"train/{s}/{a}_{b}"
            assert metrics[key] == params[objective.param_name(s, (a, b))], key


# ------------------------------------------------------- value and gradient vs reference


@pytest.mark.parametrize("shared", [False, True], ids=["per_pair", "shared"])
@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_three_modalities_match_float64_reference(x64, name, scale, shared):
    objective = make_objective(objective_config(name, pairs="anchor:image", shared=shared), MODS)
    assert objective.pairs == ANCHOR_PAIRS
    emb = _embeddings(8, 5, seed=1)
    params = _params(objective, name, SCALES[scale], np.float64)
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params)
    assert loss.dtype == jnp.float64

    ref_loss, ref_emb = 0.0, {m: np.zeros_like(emb[m]) for m in MODS}
    ref_par = {k: 0.0 for k in params}
    npairs = len(ANCHOR_PAIRS)
    for a, b in ANCHOR_PAIRS:
        sc = {s: params[objective.param_name(s, (a, b))] for s in SCALARS[name]}
        value, grads = _reference(name, emb[a], emb[b], sc["t"], sc.get("b", 0.0))
        np.testing.assert_allclose(metrics[f"train/loss/{a}_{b}"], value, rtol=1e-6)
        ref_loss += value / npairs
        ref_emb[a] += grads["x"] / npairs
        ref_emb[b] += grads["y"] / npairs
        for s in SCALARS[name]:
            ref_par[objective.param_name(s, (a, b))] += grads[s] / npairs

    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert set(g_emb) == set(MODS) and set(g_par) == set(params)
    for m in MODS:
        _close(g_emb[m], ref_emb[m], 1e-6, m)
    for k in params:
        _close(g_par[k], ref_par[k], 1e-6, k)


# ----------------------------------------------------------------------- masked losses


def _naive_sigmoid_masked(x, y, t, b, vx, vy):
    """masked.py docstring: -1/n_x sum_{i: vx_i} sum_{j: vy_j} log sigmoid(z_ij l_ij)."""
    s, total = math.exp(float(t)), 0.0
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            if vx[i] and vy[j]:
                z = 1.0 if i == j else -1.0
                total += np.logaddexp(0.0, -z * (s * float(x[i] @ y[j]) + float(b)))
    return total / max(int(np.sum(vx)), 1)


def _naive_softmax_masked(x, y, t, vx, vy):
    """masked.py docstring: mean over complete rows of the CE over present partners, x<->y."""
    s, n = math.exp(float(t)), x.shape[0]
    logits = [[s * float(x[i] @ y[j]) for j in range(n)] for i in range(n)]
    complete = [i for i in range(n) if vx[i] and vy[i]]
    i2t = t2i = 0.0
    for i in complete:
        i2t += np.logaddexp.reduce([logits[i][j] for j in range(n) if vy[j]]) - logits[i][i]
        t2i += np.logaddexp.reduce([logits[j][i] for j in range(n) if vx[j]]) - logits[i][i]
    return (i2t + t2i) / (2 * max(len(complete), 1))


MASK = np.array([True, False, True, True, False, True, True, False])


@pytest.mark.parametrize("scale", sorted(SCALES))
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_same_mask_equals_reference_on_present_rows(x64, name, scale):
    objective = make_objective(objective_config(name, pairs="anchor:image"), MODS)
    emb = _embeddings(8, 5, seed=4)
    params = _params(objective, name, SCALES[scale], np.float64)
    masks = {m: jnp.asarray(MASK) for m in MODS}
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params, masks=masks)

    sub = {m: emb[m][MASK] for m in MODS}
    ref_loss, ref_emb = 0.0, {m: np.zeros_like(emb[m]) for m in MODS}
    ref_par = {k: 0.0 for k in params}
    for a, b in ANCHOR_PAIRS:
        sc = {s: params[objective.param_name(s, (a, b))] for s in SCALARS[name]}
        value, grads = _reference(name, sub[a], sub[b], sc["t"], sc.get("b", 0.0))
        np.testing.assert_allclose(metrics[f"train/loss/{a}_{b}"], value, rtol=1e-6)
        ref_loss += value / 2
        ref_emb[a][MASK] += grads["x"] / 2
        ref_emb[b][MASK] += grads["y"] / 2
        for s in SCALARS[name]:
            ref_par[objective.param_name(s, (a, b))] += grads[s] / 2

    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for m in MODS:
        assert np.all(np.asarray(g_emb[m])[~MASK] == 0.0), m  # absent rows: exactly 0
        _close(g_emb[m], ref_emb[m], 1e-6, m)
    for k in params:
        _close(g_par[k], ref_par[k], 1e-6, k)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_all_present_mask_equals_unmasked(x64, name):
    objective = make_objective(objective_config(name, pairs="anchor:image"), MODS)
    emb = _embeddings(8, 5, seed=5)
    params = _params(objective, name, SCALES["extreme"], np.float64)
    masks = {m: jnp.ones(8, bool) for m in MODS}
    (loss, metrics), grads = _value_and_grad(objective, emb, params)
    (mloss, mmetrics), mgrads = _value_and_grad(objective, emb, params, masks=masks)
    np.testing.assert_allclose(mloss, loss, rtol=1e-12)
    for k in metrics:
        np.testing.assert_allclose(mmetrics[k], metrics[k], rtol=1e-12, err_msg=k)
    for group, mgroup in zip(grads, mgrads, strict=True):
        for k in group:
            _close(mgroup[k], group[k], 1e-10, k)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_no_rows_present_gives_zero_finite_loss(name):
    objective = make_objective(objective_config(name, pairs="anchor:image"), MODS)
    emb = _embeddings(8, 5, seed=6, dtype=np.float32)
    params = {k: jnp.asarray(v) for k, v in objective.init_params().items()}
    masks = {m: jnp.zeros(8, bool) for m in MODS}
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params, masks=masks)
    assert float(loss) == 0.0
    for a, b in ANCHOR_PAIRS:
        assert float(metrics[f"train/loss/{a}_{b}"]) == 0.0
    for g in [*g_emb.values(), *g_par.values()]:
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize("masked_side", ["image", "text"])
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_one_sided_mask_matches_naive_loop(x64, name, masked_side):
    """A mask on one modality of the pair; value and gradients vs the naive loop (+ FD)."""
    n, d = 6, 3
    vmask = np.array([True, False, True, True, False, True])
    ones = np.ones(n, bool)
    vx, vy = (vmask, ones) if masked_side == "image" else (ones, vmask)
    objective = make_objective(objective_config(name), ("image", "text"), optional=[masked_side])
    emb = _embeddings(n, d, seed=7, mods=("image", "text"))
    t, b = math.log(10.0), -2.0
    params = {"t": np.float64(t), "b": np.float64(b)}
    params = {k: params[k] for k in SCALARS[name]}

    if name == "sigmoid":

        def naive(x, y, t, b):
            return _naive_sigmoid_masked(x, y, t, b, vx, vy)
    else:

        def naive(x, y, t):
            return _naive_softmax_masked(x, y, t, vx, vy)

    masks = {masked_side: jnp.asarray(vmask)}
    (loss, _), (g_emb, g_par) = _value_and_grad(objective, emb, params, masks=masks)
    args = {"x": emb["image"], "y": emb["text"], **params}
    np.testing.assert_allclose(loss, naive(**args), rtol=1e-10)
    numeric = finite_difference(naive, args)
    _close(g_emb["image"], numeric["x"], 1e-6, "image")
    _close(g_emb["text"], numeric["y"], 1e-6, "text")
    for k in params:
        _close(g_par[k], numeric[k], 1e-6, k)
    if name == "sigmoid" and masked_side == "image":
        assert np.all(np.asarray(g_emb["image"])[~vmask] == 0.0)


def test_naive_loops_agree_with_reference_when_all_present():
    """The naive loops themselves: with every row present they equal the dense reference."""
    emb = _embeddings(5, 3, seed=8, mods=("image", "text"))
    x, y, ones = emb["image"], emb["text"], np.ones(5, bool)
    np.testing.assert_allclose(
        _naive_sigmoid_masked(x, y, 1.0, -2.0, ones, ones), sigmoid_reference(x, y, 1.0, -2.0)[0]
    )
    np.testing.assert_allclose(
        _naive_softmax_masked(x, y, 1.0, ones, ones), softmax_reference(x, y, 1.0)[0]
    )


# ------------------------------------------------------------------- ring / all_gather


RING_SCALES = {
    ("image", "audio"): (math.log(10.0), -10.0),
    ("image", "text"): (math.log(30.0), -3.0),
}


@functools.cache
def _global_result(name):
    objective = make_objective(objective_config(name, pairs="anchor:image"), MODS)
    emb = _embeddings(24, 8, seed=9, dtype=np.float32)
    params = _params(objective, name, RING_SCALES, np.float32)
    return emb, params, _value_and_grad(objective, emb, params)


@pytest.mark.parametrize("w", [1, 3, 8])
@pytest.mark.parametrize("impl", ["ring", "all_gather"])
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_sharded_impls_equal_global(name, impl, w):
    emb, params, ((ref_loss, ref_metrics), (ref_emb, ref_par)) = _global_result(name)
    objective = make_objective(objective_config(name, pairs="anchor:image", impl=impl), MODS)
    mesh = jax.make_mesh((w,), ("data",), devices=jax.devices()[:w])
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params, mesh=mesh)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k in ref_metrics:
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, err_msg=k)
    for m in MODS:
        _close(g_emb[m], ref_emb[m], 1e-5, m)
    for k in params:
        _close(g_par[k], ref_par[k], 1e-5, k)


@pytest.mark.parametrize("impl", ["ring", "all_gather"])
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_sharded_impls_refuse_optional_modalities(name, impl):
    cfg = objective_config(name, pairs="anchor:image", impl=impl)
    with pytest.raises(ValueError, match=r"^config\.loss\.impl: ") as info:
        make_objective(cfg, MODS, optional=("audio",))
    assert "image-audio" in str(info.value) and "'audio'" in str(info.value)
    # Pairs without the optional modality, or the masked global impl, are fine.
    make_objective(objective_config(name, pairs="image-text", impl=impl), MODS, optional=["audio"])
    make_objective(objective_config(name, pairs="anchor:image"), MODS, optional=["audio"])
