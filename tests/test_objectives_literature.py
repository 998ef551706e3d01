"""DCL, Symile and GRAM (multimodal_ssl/losses/literature.py and their loss modules)
against the naive float64 references of tests/literature_reference.py (value and every
gradient), at moderate and extreme scales; the ring forms against the global ones on 1,
3 and 8 devices; config errors. The dense forms take batch-sharded inputs (the trainer's
layout)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from literature_reference import dcl_reference, gram_reference, symile_reference
from loss_reference import finite_difference

from multimodal_ssl.losses import dcl, symile
from multimodal_ssl.losses.objectives import make_objective, objective_config

MODS = ("audio", "image", "text")  # sorted: the order of Symile's modalities


def _embeddings(n, d, seed, mods=MODS, dtype=np.float64, spread=1.0):
    """L2-normalised ``{m: [n, d]}``, each modality correlated with a shared base."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    out = {}
    for m in mods:
        e = base + spread * rng.normal(size=(n, d))
        out[m] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(dtype)
    return out


def _grad_fn(objective, **kw):
    """Jitted ``(emb, params) -> (loss, metrics), (d emb, d params)`` (compile once, reuse)."""
    fn = jax.jit(jax.value_and_grad(lambda e, p: objective(e, p, **kw), (0, 1), has_aux=True))

    def call(emb, params):
        return fn(
            {k: jnp.asarray(v) for k, v in emb.items()},
            {k: jnp.asarray(v) for k, v in params.items()},
        )

    return call


def _batch_sharded(emb, w=4):
    """The trainer's layout: rows Explicit-sharded over a ``w``-device "data" axis."""
    mesh = jax.make_mesh((w,), ("data",), devices=jax.devices()[:w])
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    return {m: jax.device_put(e, rows) for m, e in emb.items()}


def _value_and_grad(objective, emb, params, **kw):
    return _grad_fn(objective, **kw)(emb, params)


def _close(actual, expected, tol, msg=""):
    expected = np.asarray(expected, np.float64)
    atol = tol * max(np.abs(expected).max(), 1e-6)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=tol, atol=atol, err_msg=msg
    )


# -------------------------------------------------------------------------------- DCL

DCL_T = {"moderate": math.log(10.0), "extreme": math.log(1000.0)}


def test_dcl_matches_float64_reference(x64):
    objective = make_objective(objective_config("dcl", pairs="anchor:image"), MODS)
    fn = _grad_fn(objective)
    emb = _embeddings(6, 4, seed=1)
    for scale, t in DCL_T.items():
        params = {f"t_image_{m}": np.float64(t - 0.1 * k) for k, m in enumerate(("audio", "text"))}
        (loss, metrics), (g_emb, g_par) = fn(emb, params)
        ref_loss, ref_emb = 0.0, {m: np.zeros_like(emb[m]) for m in MODS}
        for b in ("audio", "text"):
            value, grads = dcl_reference(emb["image"], emb[b], params[f"t_image_{b}"])
            np.testing.assert_allclose(metrics[f"train/loss/image_{b}"], value, rtol=1e-6)
            ref_loss += value / 2
            ref_emb["image"] += grads["x"] / 2
            ref_emb[b] += grads["y"] / 2
            _close(g_par[f"t_image_{b}"], grads["t"] / 2, 1e-6, f"{scale} {b}")
        assert np.isfinite(loss)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, err_msg=scale)
        for m in MODS:
            _close(g_emb[m], ref_emb[m], 1e-6, f"{scale} {m}")


def test_dcl_reference_gradients_match_finite_differences(x64):
    emb = _embeddings(4, 3, seed=2)
    args = {"x": emb["image"], "y": emb["text"], "t": np.float64(0.7)}
    fd = finite_difference(lambda **a: dcl_reference(**a)[0], args)
    grads = dcl_reference(**args)[1]
    for k in args:
        _close(grads[k], fd[k], 1e-6, k)


@functools.cache
def _dcl_global():
    objective = make_objective(objective_config("dcl", pairs="anchor:image"), MODS)
    emb = _embeddings(24, 8, seed=3, dtype=np.float32)
    params = {"t_image_audio": np.float32(math.log(30.0)), "t_image_text": np.float32(2.0)}
    return emb, params, _value_and_grad(objective, emb, params)


@pytest.mark.parametrize(
    "impl, w, chunk", [("ring", 1, None), ("ring", 3, 2), ("ring", 8, 1), ("all_gather", 3, None)]
)
def test_dcl_sharded_impls_equal_global(impl, w, chunk):
    """chunk 1: a tile row of the own block holds only the (excluded) positive."""
    emb, params, ((ref_loss, _), (ref_emb, ref_par)) = _dcl_global()
    cfg = objective_config("dcl", pairs="anchor:image", impl=impl, chunk_size=chunk)
    mesh = jax.make_mesh((w,), ("data",), devices=jax.devices()[:w])
    (loss, _), (g_emb, g_par) = _value_and_grad(make_objective(cfg, MODS), emb, params, mesh=mesh)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k, ref in {**ref_emb, **ref_par}.items():
        _close({**g_emb, **g_par}[k], ref, 1e-5, k)


def test_dcl_masked_all_present_equals_global_and_absent_rows_drop_out(x64):
    emb = _embeddings(6, 4, seed=4)
    x, y, t = emb["image"], emb["text"], np.float64(1.3)
    ones = np.ones(6, bool)
    masked_loss = jax.jit(dcl.dcl_masked)
    full = masked_loss(x, y, t, ones, ones)
    np.testing.assert_allclose(full, dcl.dcl_global(x, y, t), rtol=1e-12)
    keep = np.array([True, False, True, True, False, True])
    masked = masked_loss(x, y, t, keep, ones)  # absent images: their rows and columns go
    logits, rows = np.exp(t) * x @ y.T, np.flatnonzero(keep)
    i2t = [_lse_np([logits[i, j] for j in range(6) if j != i]) - logits[i, i] for i in rows]
    t2i = [_lse_np([logits[j, i] for j in rows if j != i]) - logits[i, i] for i in rows]
    np.testing.assert_allclose(masked, (np.mean(i2t) + np.mean(t2i)) / 2, rtol=1e-12)
    one = np.eye(6, dtype=bool)[0]  # a single complete row: no partner, finite gradients
    grads = jax.jit(jax.grad(masked_loss))(x, y, t, one, one)
    assert np.isfinite(grads).all()


def _lse_np(values):
    values = np.asarray(values)
    return values.max() + np.log(np.sum(np.exp(values - values.max())))


# ----------------------------------------------------------------------------- Symile


def _symile_reference(emb, t, perms=None, order=MODS):
    loss, grads = symile_reference([emb[m] for m in order], t, perms)
    return loss, dict(zip(order, grads["embs"], strict=True)), grads["t"]


@pytest.mark.parametrize("negatives", ["n", "n_squared"])
def test_symile_matches_float64_reference(x64, negatives):
    """Moderate scale and the extreme one (|logits| ~ 1e3), value and every gradient;
    inputs batch-sharded as in the trainer (the dense forms must keep that legal)."""
    objective = make_objective(objective_config("symile", negatives=negatives), MODS)
    rng = jax.random.key(0)
    fn = _grad_fn(objective, rng=rng)
    emb = _embeddings(8, 3, seed=5, spread=0.3)
    perms = None
    if negatives == "n":
        perms = np.asarray(symile.shuffle_permutations(rng, 3, 8))
        assert all(sorted(p) == list(range(8)) for p in perms.reshape(-1, 8))
        assert len({tuple(p) for p in perms.reshape(-1, 8)}) > 1
    mip = np.abs(np.sum(emb["audio"] * emb["image"] * emb["text"], 1)).max()
    for t in (math.log(5.0), math.log(3000.0)):
        (loss, metrics), (g_emb, g_par) = fn(_batch_sharded(emb), {"t": np.float64(t)})
        ref_loss, ref_emb, ref_t = _symile_reference(emb, t, perms)
        assert np.isfinite(loss) and (t < 5 or math.exp(t) * mip > 500)  # |logits| ~ 1e3
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        per_anchor = np.mean([metrics[f"train/loss/{m}"] for m in MODS])
        np.testing.assert_allclose(per_anchor, loss, rtol=1e-12)
        for m in MODS:
            _close(g_emb[m], ref_emb[m], 1e-6, m)
        _close(g_par["t"], ref_t, 1e-6, "t")


def test_symile_reference_gradients_match_finite_differences(x64):
    emb = _embeddings(3, 2, seed=6)

    def fn(audio, image, text, t):
        return symile_reference([audio, image, text], t)[0]

    fd = finite_difference(fn, {**emb, "t": np.float64(0.5)})
    _, grads, dt = _symile_reference(emb, 0.5)
    for m in MODS:
        _close(grads[m], fd[m], 1e-6, m)
    _close(dt, fd["t"], 1e-6, "t")


def test_symile_four_modalities(x64):
    """B^3 candidates per anchor row (the reference enumerates them)."""
    embs = list(_embeddings(4, 3, seed=7, mods=("a", "b", "c", "d")).values())
    (value, _), (grads, dt) = jax.jit(
        jax.value_and_grad(symile.symile_n_squared, (0, 1), has_aux=True)
    )([jnp.asarray(e) for e in embs], jnp.float64(1.5))
    ref_loss, ref = symile_reference(embs, 1.5)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-10)
    for g, r in zip(grads, ref["embs"], strict=True):
        _close(g, r, 1e-10)
    _close(dt, ref["t"], 1e-10)


def _ring_objective(w, chunk=None):
    cfg = objective_config("symile", negatives="n_squared", impl="ring", chunk_size=chunk)
    return make_objective(cfg, MODS), jax.make_mesh((w,), ("data",), devices=jax.devices()[:w])


@functools.cache
def _symile_global():
    objective = make_objective(objective_config("symile", negatives="n_squared"), MODS)
    emb = _embeddings(24, 6, seed=8, dtype=np.float32, spread=0.5)
    params = {"t": np.float32(math.log(50.0))}
    return emb, params, _value_and_grad(objective, emb, params)


@pytest.mark.parametrize("w, chunk", [(1, 8), (3, None), (8, 1)])
def test_symile_ring_equals_global(w, chunk):
    """chunk: home rows per step (1 device: 3 chunks of 8; 8 devices: 3 chunks of 1)."""
    emb, params, ((ref_loss, ref_metrics), (ref_emb, ref_par)) = _symile_global()
    objective, mesh = _ring_objective(w, chunk)
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params, mesh=mesh)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k in ref_metrics:
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5, err_msg=k)
    for k, ref in {**ref_emb, **ref_par}.items():
        _close({**g_emb, **g_par}[k], ref, 1e-5, k)


def test_symile_ring_extreme_scale_matches_float64_reference(x64):
    objective, mesh = _ring_objective(3, chunk=1)
    emb = _embeddings(6, 3, seed=9, spread=0.3)
    t = math.log(3000.0)
    (loss, _), (g_emb, g_par) = _value_and_grad(objective, emb, {"t": np.float64(t)}, mesh=mesh)
    ref_loss, ref_emb, ref_t = _symile_reference(emb, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for m in MODS:
        _close(g_emb[m], ref_emb[m], 1e-6, m)
    _close(g_par["t"], ref_t, 1e-6, "t")


def test_symile_ring_passes_blocks_without_gathering():
    objective, mesh = _ring_objective(4)
    emb = {m: jnp.ones((8, 4)) for m in MODS}
    fn = jax.grad(lambda e: objective(e, {"t": jnp.float32(0.0)}, mesh=mesh)[0])
    jaxpr = str(jax.make_jaxpr(fn)(emb))
    assert "ppermute" in jaxpr and "all_gather" not in jaxpr


# ------------------------------------------------------------------------------- GRAM


@pytest.mark.parametrize(
    "mods, smoothing, scales",
    [
        (MODS, 0.1, (math.log(1 / 0.07), math.log(1000.0))),
        (("audio", "depth", "image", "text"), 0.0, (math.log(20.0),)),
    ],
    ids=["three-smoothed", "four"],
)
def test_gram_matches_float64_reference(x64, mods, smoothing, scales):
    """Three modalities at tau = 0.07 and at |logits| ~ 1e3 (volumes are <= 1); four.
    Inputs batch-sharded as in the trainer."""
    objective = make_objective(objective_config("gram", label_smoothing=smoothing), mods)
    fn = _grad_fn(objective)
    emb = _embeddings(8, 6, seed=10, mods=mods)
    others = [m for m in mods if m != "text"]
    for t in scales:
        (loss, metrics), (g_emb, g_par) = fn(_batch_sharded(emb), {"t": np.float64(t)})
        ref_loss, ref = gram_reference(emb["text"], [emb[m] for m in others], t, smoothing)
        assert np.isfinite(loss) and metrics["train/t"] == t
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        _close(g_emb["text"], ref["anchor"], 1e-6, "text")
        for m, g in zip(others, ref["others"], strict=True):
            _close(g_emb[m], g, 1e-6, m)
        _close(g_par["t"], ref["t"], 1e-6, "t")


def test_gram_reference_gradients_match_finite_differences(x64):
    emb = _embeddings(3, 4, seed=11)

    def fn(audio, image, text, t):
        return gram_reference(text, [audio, image], t, 0.1)[0]

    fd = finite_difference(fn, {**emb, "t": np.float64(1.0)})
    _, ref = gram_reference(emb["text"], [emb["audio"], emb["image"]], 1.0, 0.1)
    for m, g in (("text", ref["anchor"]), ("audio", ref["others"][0]), ("image", ref["others"][1])):
        _close(g, fd[m], 1e-6, m)
    _close(ref["t"], fd["t"], 1e-6, "t")


def test_gram_degenerate_tuples_give_finite_loss_and_zero_gradients():
    """f32, identical and antiparallel vectors (det G = 0, the aligned optimum) at
    |logits| ~ 1e3: every volume is floored (equal logits, loss log B), gradients 0."""
    objective = make_objective(objective_config("gram"), MODS)
    text = _embeddings(4, 3, seed=12, dtype=np.float32)["text"]
    emb = {m: text * (-1 if m == "audio" else 1) for m in MODS}
    (loss, _), (g_emb, g_par) = _value_and_grad(objective, emb, {"t": np.float32(7.0)})
    np.testing.assert_allclose(loss, math.log(4), rtol=1e-6)
    assert abs(float(g_par["t"])) < 1e-6  # sum of dL/dlogits (0 up to rounding) x logit
    assert all(not np.asarray(g).any() for g in g_emb.values())


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "name, overrides, optional, key",
    [
        ("symile", {"impl": "ring"}, (), "impl"),  # the O(n) form has no ring
        ("symile", {"impl": "all_gather", "negatives": "n_squared"}, (), "impl"),
        ("symile", {"negatives": "n3"}, (), "negatives"),
        ("symile", {"negatives": "n_squared", "impl": "ring", "chunk_size": 0}, (), "chunk_size"),
        ("symile", {}, ("audio",), "name"),
        ("gram", {"anchor": "depth"}, (), "anchor"),
        ("gram", {"label_smoothing": 1.0}, (), "label_smoothing"),
        ("gram", {}, ("audio",), "name"),
        ("dcl", {"impl": "ring", "pairs": "image-audio"}, ("audio",), "impl"),
    ],
)
def test_config_errors_name_the_key(name, overrides, optional, key):
    with pytest.raises(ValueError, match=rf"^config\.loss\.{key}: "):
        make_objective(objective_config(name, **overrides), MODS, optional=optional)


def test_symile_shuffled_needs_rng():
    objective = make_objective(objective_config("symile"), MODS)
    with pytest.raises(ValueError, match="needs rng="):
        objective({m: jnp.ones((2, 3)) for m in MODS}, {"t": jnp.float32(0.0)})
