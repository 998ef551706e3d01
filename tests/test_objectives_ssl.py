"""DeCUR, SimCLR (SLIP's term), Matryoshka and mixtures of objectives
(multimodal_ssl/losses/{decur,simclr,matryoshka,mixture}.py).

Each is checked against a naive float64 numpy reference written here from the paper's
formula (loops over entries, no shared code with the implementation): the value, and
the gradients of every embedding and every param of the objective (central finite
differences of the reference, or tests/loss_reference.py's hand-derived SigLIP/CLIP
gradients chained through the prefix re-normalisation), at moderate and extreme scales.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from loss_reference import finite_difference, sigmoid_reference, softmax_reference

from multimodal_ssl.losses.mixture import mix_config, mix_term
from multimodal_ssl.losses.objectives import make_objective, objective_config


def _value_and_grad(objective, embeddings, params):
    """Jitted ``(loss, metrics), (d embeddings, d params)`` of ``objective``."""
    fn = jax.jit(jax.value_and_grad(lambda e, p: objective(e, p), argnums=(0, 1), has_aux=True))
    return fn(jax.tree.map(jnp.asarray, embeddings), jax.tree.map(jnp.asarray, params))


def _close(actual, expected, tol=1e-6, msg=""):
    expected = np.asarray(expected, np.float64)
    atol = tol * max(np.abs(expected).max(), 1e-12)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=atol, err_msg=msg)


def _random(shape, seed, scale=1.0):
    return scale * np.random.default_rng(seed).normal(size=shape)


# ------------------------------------------------------------------------------ DeCUR


def _naive_bn(z, eps):
    n, d = z.shape
    out = np.zeros_like(z)
    for j in range(d):
        mean = sum(z[b, j] for b in range(n)) / n
        var = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
        for b in range(n):
            out[b, j] = (z[b, j] - mean) / math.sqrt(var + eps)
    return out


def _naive_bt(x, y, lam, eps, target_of):
    """sum_i (C_ii - target_of(i))^2 + lam sum_{i != j} C_ij^2 over the index set of
    ``target_of`` (a dict {i: target}); C = bn(x).T bn(y) / n."""
    bx, by = _naive_bn(x, eps), _naive_bn(y, eps)
    n = x.shape[0]
    total = 0.0
    for i in target_of:
        for j in target_of:
            c = sum(bx[b, i] * by[b, j] for b in range(n)) / n
            total += (c - target_of[i]) ** 2 if i == j else lam * c**2
    return total


def _naive_decur(emb, k, lam, eps, views):
    x, y = emb["image"], emb["depth"]
    d = x.shape[1]
    common = _naive_bt(x, y, lam, eps, dict.fromkeys(range(k), 1.0))
    unique = _naive_bt(x, y, lam, eps, dict.fromkeys(range(k, d), 0.0))
    terms = [(common + unique) / 2]
    for m, v in views:
        terms.append(_naive_bt(emb[m], emb[v], lam, eps, dict.fromkeys(range(d), 1.0)))
    return sum(terms) / len(terms)


DECUR_MODS = ("image", "depth", "image_view2", "depth_view2")


INTRA = "image-image_view2,depth-depth_view2"


@pytest.mark.parametrize(
    "views, scale", [("", 1.0), (INTRA, 1e-3), (INTRA, 1e6)], ids=["cross-unit", "tiny", "huge"]
)
def test_decur_matches_naive_float64_reference(x64, views, scale):
    lam, eps = 0.3, 1e-5
    objective = make_objective(
        objective_config(
            "decur", pairs="image-depth", views=views, common_fraction=0.5,
            off_diagonal_weight=lam, eps=eps,
        ),
        DECUR_MODS,
    )
    assert objective.unit_rows is False and objective.init_params() == {}
    n, d = 6, 4
    base = _random((n, d), 0)
    emb = {m: scale * (base + _random((n, d), i + 1)) for i, m in enumerate(DECUR_MODS)}
    (loss, metrics), (grads, _) = _value_and_grad(objective, emb, {})
    pairs = [tuple(p.split("-")) for p in views.split(",") if p]

    def ref(**e):
        return _naive_decur(e, 2, lam, eps, pairs)

    _close(loss, ref(**emb), 1e-10)
    common = _naive_bt(emb["image"], emb["depth"], lam, eps, {0: 1.0, 1: 1.0})
    _close(metrics["train/loss/common"], common, 1e-10)
    used = {"image", "depth", *(m for p in pairs for m in p)}
    numeric = finite_difference(ref, emb, eps=1e-6 * scale)
    for m in DECUR_MODS:
        if m in used:
            _close(grads[m], numeric[m], 1e-6, m)
        else:
            assert np.all(np.asarray(grads[m]) == 0), m


def test_decur_common_dims_and_errors():
    obj = make_objective(objective_config("decur", pairs="image-text"), ("image", "text"))
    assert obj.common_dims(512) == 448 and obj.common_dims(128) == 112 and obj.common_dims(1) == 1
    with pytest.raises(ValueError, match=r"^config\.loss\.common_fraction: "):
        make_objective(objective_config("decur", common_fraction=0.0), ("image", "text"))
    with pytest.raises(ValueError, match=r"^config\.loss\.pairs: .*one pair"):
        make_objective(objective_config("decur", pairs="all"), ("image", "text", "depth"))
    with pytest.raises(ValueError, match=r"^config\.loss\.views: .*'image_view2'"):
        make_objective(objective_config("decur", views="image-image_view2"), ("image", "text"))
    with pytest.raises(ValueError, match=r"^config\.loss\.name: 'decur' needs"):
        make_objective(objective_config("decur"), ("image", "text"), optional=("text",))


# ----------------------------------------------------------------------------- SimCLR


def _naive_nt_xent(u, v, tau):
    z = [r / np.linalg.norm(r) for r in np.concatenate([u, v])]
    n2, n = len(z), len(u)
    total = 0.0
    for i in range(n2):
        others = [float(z[i] @ z[k]) / tau for k in range(n2) if k != i]
        total += np.logaddexp.reduce(others) - float(z[i] @ z[(i + n) % n2]) / tau
    return total / n2


def _naive_head(x, w0, b0, w1, b1):
    return np.maximum(x @ w0 + b0, 0.0) @ w1 + b1


@pytest.mark.parametrize(
    "mlp_dim, tau", [(5, 0.1), (5, 1e-3), (0, 1e-3)], ids=["head", "head-extreme", "extreme"]
)
def test_simclr_matches_naive_float64_reference(x64, mlp_dim, tau):
    mods = ("image", "text", "image_view2")
    objective = make_objective(
        objective_config("simclr", temperature=tau, mlp_dim=mlp_dim, out_dim=3),
        mods,
        embed_dim=4,
    )
    n, d = 5, 4
    base = _random((n, d), 0)
    emb = {m: base + 0.5 * _random((n, d), i + 1) for i, m in enumerate(mods)}
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), objective.init_params())
    if mlp_dim:
        head = params["simclr_head"]
        assert head["hidden"]["kernel"].shape == (4, 5) and head["out"]["kernel"].shape == (5, 3)
        head["hidden"]["bias"] = 0.1 * _random(5, 9)  # non-zero biases reach the gradient
        head["out"]["bias"] = 0.1 * _random(3, 10)
    (loss, metrics), (g_emb, g_par) = _value_and_grad(objective, emb, params)

    def ref(u, v, **p):
        if p:
            u, v = _naive_head(u, **p), _naive_head(v, **p)
        return _naive_nt_xent(u, v, tau)

    flat = {}
    if mlp_dim:
        flat = {"w0": head["hidden"]["kernel"], "b0": head["hidden"]["bias"],
                "w1": head["out"]["kernel"], "b1": head["out"]["bias"]}
    args = {"u": emb["image"], "v": emb["image_view2"], **flat}
    value = ref(**args)
    assert np.isfinite(loss)
    _close(loss, value, 1e-10)
    _close(metrics["train/loss/image_image_view2"], value, 1e-10)
    numeric = finite_difference(ref, args, eps=1e-6 if tau > 0.01 else 1e-8)
    _close(g_emb["image"], numeric["u"], 1e-6, "image")
    _close(g_emb["image_view2"], numeric["v"], 1e-6, "image_view2")
    assert np.all(np.asarray(g_emb["text"]) == 0)
    if mlp_dim:
        got = g_par["simclr_head"]
        for key, (layer, leaf) in {"w0": ("hidden", "kernel"), "b0": ("hidden", "bias"),
                                   "w1": ("out", "kernel"), "b1": ("out", "bias")}.items():
            _close(got[layer][leaf], numeric[key], 1e-6, key)


def test_simclr_head_needs_embed_dim_and_views_must_exist():
    obj = make_objective(objective_config("simclr"), ("image", "text", "image_view2"))
    with pytest.raises(ValueError, match="embed_dim"):
        obj.init_params()
    with pytest.raises(ValueError, match=r"^config\.loss\.views: .*'image_view2'.*no tower"):
        make_objective(objective_config("simclr"), ("image", "text"))


# ------------------------------------------------------------------------- Matryoshka


def _renorm_grad(p, g):
    """Gradient w.r.t. p of f(p / |p|) (rows), given g = df/du at u = p / |p|."""
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    u = p / norm
    return (g - u * np.sum(u * g, axis=1, keepdims=True)) / norm


MRL_SCALES = {"moderate": (0.5, -2.0), "extreme": (math.log(1000.0), 900.0)}


@pytest.mark.parametrize(
    "inner, scale", [("sigmoid", "moderate"), ("sigmoid", "extreme"), ("softmax", "extreme")]
)
def test_matryoshka_matches_reference_at_each_prefix(x64, inner, scale):
    dims, weights = (2, 3, 5), (1.0, 0.5, 2.0)
    cfg = objective_config("matryoshka", dims=dims, weights=weights)
    cfg.objective = objective_config(inner)
    objective = make_objective(cfg, ("image", "text"), embed_dim=5)
    names = {"sigmoid": ("t", "b"), "softmax": ("t",)}[inner]
    assert set(objective.init_params()) == {f"{s}_d{m}" for m in dims for s in names}
    n, d = 6, 5
    x = _random((n, d), 1, scale=3.0)  # not unit rows: the prefixes are re-normalised
    y = x + _random((n, d), 2, scale=2.0)
    t, b = MRL_SCALES[scale]
    params = {}
    for i, m in enumerate(dims):
        params[f"t_d{m}"] = np.float64(t - 0.1 * i)
        if inner == "sigmoid":
            params[f"b_d{m}"] = np.float64(b + i)
    (loss, metrics), (g_emb, g_par) = _value_and_grad(
        objective, {"image": x, "text": y}, params
    )
    ref_loss, gx, gy = 0.0, np.zeros_like(x), np.zeros_like(y)
    for m, w in zip(dims, weights, strict=True):
        px, py = x[:, :m], y[:, :m]
        ux = px / np.linalg.norm(px, axis=1, keepdims=True)
        uy = py / np.linalg.norm(py, axis=1, keepdims=True)
        if inner == "sigmoid":
            value, grads = sigmoid_reference(ux, uy, params[f"t_d{m}"], params[f"b_d{m}"])
        else:
            value, grads = softmax_reference(ux, uy, params[f"t_d{m}"])
        _close(metrics[f"train/loss/d{m}"], value, 1e-9)
        assert f"train/d{m}/loss/image_text" in metrics and f"train/d{m}/t" in metrics
        ref_loss += w * value
        gx[:, :m] += w * _renorm_grad(px, grads["x"])
        gy[:, :m] += w * _renorm_grad(py, grads["y"])
        for s in names:
            _close(g_par[f"{s}_d{m}"], w * grads[s], 1e-6, f"{s}_d{m}")
    assert np.isfinite(loss)
    _close(loss, ref_loss, 1e-9)
    _close(g_emb["image"], gx, 1e-6, "image")
    _close(g_emb["text"], gy, 1e-6, "text")


def test_matryoshka_config_errors():
    mods = ("image", "text")
    for dims in ((32, 16), (0, 8), (8, 8), ()):
        with pytest.raises(ValueError, match=r"^config\.loss\.dims: "):
            make_objective(objective_config("matryoshka", dims=dims), mods)
    plain = {**objective_config("matryoshka").to_dict(), "dims": "4, 8"}  # a plain dict config
    assert make_objective(plain, mods).config["dims"] == (4, 8)
    with pytest.raises(ValueError, match=r"^config\.loss\.dims: 128 exceeds model\.embed_dim 64"):
        make_objective(objective_config("matryoshka"), mods, embed_dim=64)
    with pytest.raises(ValueError, match=r"^config\.loss\.weights: expected 4 numbers"):
        make_objective(objective_config("matryoshka", weights=(1.0,)), mods)
    cfg = objective_config("matryoshka")
    cfg.objective.impl = "rign"
    with pytest.raises(ValueError, match=r"^config\.loss\.objective\.impl: 'rign'"):
        make_objective(cfg, mods)


# ---------------------------------------------------------------------------- mixture


MIX_MODS = ("image", "text", "image_view2")


def _mixture():
    return mix_config(
        siglip=mix_term("sigmoid", weight=0.5),
        simclr=mix_term("simclr", weight=2.0, mlp_dim=4, out_dim=3),
        decur=mix_term("decur", weight=0.25, common_fraction=0.5),
    )


def test_mixture_is_the_weighted_sum_of_its_terms(x64):
    """Value, metrics and gradients equal the terms called alone (each checked against
    its reference above); DeCUR takes raw projections, so the mixture does too and
    normalises them for the unit-row terms."""
    mix = make_objective(_mixture(), MIX_MODS, embed_dim=4)
    assert mix.unit_rows is False
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), mix.init_params())
    assert set(params) == {"t", "b", "simclr_head"}
    raw = {m: _random((6, 4), i, scale=2.0) for i, m in enumerate(MIX_MODS)}
    unit = {m: e / np.linalg.norm(e, axis=1, keepdims=True) for m, e in raw.items()}
    (loss, metrics), (g_emb, g_par) = _value_and_grad(mix, raw, params)

    ref_loss, ref_emb, ref_par = 0.0, {m: 0.0 for m in MIX_MODS}, {}
    for term, w in (("siglip", 0.5), ("simclr", 2.0), ("decur", 0.25)):
        obj = mix.terms[term][1]
        inputs = raw if term == "decur" else unit
        own = {k: v for k, v in params.items() if k in obj.init_params()}
        (value, sub), (ge, gp) = _value_and_grad(obj, inputs, own)
        assert metrics[f"train/loss/{term}"] == pytest.approx(float(value), rel=1e-12)
        for k, v in sub.items():
            assert metrics[f"train/{term}/{k.removeprefix('train/')}"] == pytest.approx(float(v))
        ref_loss += w * float(value)
        for m in MIX_MODS:
            g = np.asarray(ge[m])
            if term != "decur":  # through the normalisation of the raw projections
                g = _renorm_grad(raw[m], g)
            ref_emb[m] = ref_emb[m] + w * g
        for k in own:
            ref_par[k] = jax.tree.map(lambda a, w=w: w * np.asarray(a), gp[k])
    _close(loss, ref_loss, 1e-12)
    for m in MIX_MODS:
        _close(g_emb[m], ref_emb[m], 1e-9, m)
    for k in params:
        jax.tree.map(lambda a, b, k=k: _close(a, b, 1e-9, k), g_par[k], ref_par[k])


def test_mixture_config_errors_name_the_term_key():
    with pytest.raises(ValueError, match=r"^config\.loss\.terms\.clip\.impl: 'rign'"):
        make_objective(mix_config(clip=mix_term("softmax", impl="rign")), ("image", "text"))
    with pytest.raises(ValueError, match=r"^config\.loss\.terms\.clip\.weight: must be >= 0"):
        make_objective(mix_config(clip=mix_term("softmax", weight=-1.0)), ("image", "text"))
    with pytest.raises(ValueError, match=r"^config\.loss\.terms: a mixture needs"):
        make_objective(objective_config("mix"), ("image", "text"))
    twice = mix_config(a=mix_term("sigmoid"), b=mix_term("softmax"))
    with pytest.raises(ValueError, match=r"terms 'a' and 'b' both have a param 't'"):
        make_objective(twice, ("image", "text")).init_params()
    # Term keys are plain config keys: overriding one (as the command line does) works.
    cfg = _mixture()
    cfg.terms.simclr.weight = 0.0
    cfg.terms.siglip.name = "softmax"  # one flag switches a term (its b_init is dropped)
    mix = make_objective(cfg, MIX_MODS, embed_dim=4)
    assert mix.terms["simclr"][0] == 0.0 and set(mix.init_params()) == {"t", "simclr_head"}


def test_mixture_on_a_4_device_mesh_equals_one_device():
    """Rows sharded over the batch axis (as the train step gives them): XLA partitions the
    dense DeCUR / SimCLR math to the same value and gradients."""
    mix = make_objective(_mixture(), MIX_MODS, embed_dim=4)
    raw = {m: _random((8, 4), i).astype(np.float32) for i, m in enumerate(MIX_MODS)}
    params = mix.init_params()
    (loss, _), grads = _value_and_grad(mix, raw, params)
    auto = (jax.sharding.AxisType.Auto,)  # as the trainer's mesh (sharding.make_mesh)
    mesh = jax.make_mesh((4,), ("data",), axis_types=auto, devices=jax.devices()[:4])
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    sharded = {m: jax.device_put(e, rows) for m, e in raw.items()}
    fn = jax.jit(jax.value_and_grad(lambda e, p: mix(e, p, mesh=mesh), argnums=(0, 1),
                                    has_aux=True))
    (loss4, _), grads4 = fn(sharded, params)
    np.testing.assert_allclose(loss4, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: _close(a, b, 1e-5), grads4, grads)
