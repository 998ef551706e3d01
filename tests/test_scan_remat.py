"""Scanned layers and rematerialisation: the same function and gradient as the plain
per-layer model, checkpoint conversion between the two layouts, bf16 compute keeps f32
params and an f32 loss."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl import losses
from multimodal_ssl.config import set_towers
from multimodal_ssl.losses.objectives import make_objective, objective_config
from multimodal_ssl.models.common import Encoder
from multimodal_ssl.models.layout import scan_layers, unscan_layers
from multimodal_ssl.models.towers import MultiTower, build_model
from multimodal_ssl.recipes import load_recipe
from tests.test_train import ROOT

KEY = jax.random.key(0)
SIZES = {"width": 16, "depth": 3, "mlp_dim": 32, "num_heads": 2}


def _model(scan=False, remat="none", dtype="float32"):
    tower = {**SIZES, "scan": scan, "remat": remat}
    return MultiTower(
        towers={
            "image": {"type": "vit", **tower, "variant": "mu/4", "pool": "map"},
            "text": {"type": "text", **tower, "vocab_size": 40, "max_len": 6, "pool": "last"},
        },
        embed_dim=8,
        dtype=dtype,
    )


def _inputs():
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    text = jnp.asarray(rng.integers(0, 40, (4, 6)), jnp.int32)
    return {"image": image, "text": text}


def _params():
    """Random N(0, 0.3^2) params of the per-layer model (no init compile)."""
    shapes = jax.eval_shape(_model().init, KEY, _inputs())["params"]
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


def test_layout_conversion_round_trip_and_matches_scanned_init():
    params = _params()
    scanned = scan_layers(params)
    block = scanned["img"]["Transformer"]["encoderblock"]
    assert "encoderblock_0" not in scanned["img"]["Transformer"]
    assert block["MlpBlock_0"]["Dense_0"]["kernel"].shape == (3, 16, 32)
    np.testing.assert_array_equal(
        block["MlpBlock_0"]["Dense_0"]["kernel"][2],
        params["img"]["Transformer"]["encoderblock_2"]["MlpBlock_0"]["Dense_0"]["kernel"],
    )
    init = jax.eval_shape(_model(scan=True).init, KEY, _inputs())["params"]
    assert jax.tree.structure(init) == jax.tree.structure(scanned)
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, scanned)
    back = unscan_layers(scanned)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    with pytest.raises(ValueError, match=r"encoder blocks \[0, 2\] are not 0..1"):
        scan_layers({"encoderblock_0": {"w": np.zeros(1)}, "encoderblock_2": {"w": np.zeros(1)}})


ENCODER = {"depth": 2, "mlp_dim": 32, "num_heads": 2}
VARIANTS = [(True, "none"), (False, "full"), (True, "dots_no_batch")]  # (scan, remat)


def test_scan_and_remat_give_the_same_loss_and_gradient():
    """The per-layer Encoder vs scanned / rematerialised ones, all in one jit (one compile)."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16)), jnp.float32)
    shapes = jax.eval_shape(Encoder(**ENCODER).init, KEY, x)["params"]
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)

    def loss(encoder, p):
        return jnp.sum(jnp.sin(encoder.apply({"params": p}, x)))

    def all_variants(params):
        ref = jax.value_and_grad(partial(loss, Encoder(**ENCODER)))(params)
        outs = []
        for scan, remat in VARIANTS:
            converted = scan_layers(params) if scan else params
            value, grads = jax.value_and_grad(
                partial(loss, Encoder(**ENCODER, scan=scan, remat=remat))
            )(converted)
            outs.append((value, unscan_layers(grads) if scan else grads))
        return ref, outs

    (ref_loss, ref_grads), outs = jax.jit(all_variants)(params)
    for (scan, remat), (value, grads) in zip(VARIANTS, outs, strict=True):
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6, err_msg=f"{scan} {remat}")
        jax.tree.map(partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), grads, ref_grads)
        encoder = Encoder(**ENCODER, scan=scan, remat=remat)
        converted = scan_layers(params) if scan else params
        jaxpr = str(jax.make_jaxpr(jax.grad(partial(loss, encoder)))(converted))
        assert ("scan[" in jaxpr) == scan  # the blocks really are one lax.scan
        assert ("remat" in jaxpr) == (remat != "none")  # and really rematerialised


def test_unknown_remat_policy_is_rejected():
    with pytest.raises(
        ValueError, match=r"config\.model\.towers\.image\.remat: 'everything' is not one of"
    ):
        jax.eval_shape(_model(remat="everything").init, KEY, _inputs())


def test_bf16_compute_keeps_f32_params_grads_and_loss():
    """Abstract evaluation (dtypes only, no compile); values: tests/test_models.py."""
    inputs, model = _inputs(), _model(dtype="bfloat16")
    # The towers' params and the objective's temperature t, as in the train state.
    params = {
        **jax.eval_shape(model.init, KEY, inputs)["params"],
        **make_objective(objective_config("softmax"), ("image", "text")).init_params(),
    }

    def loss(p):
        z = model.apply({"params": {k: p[k] for k in ("img", "txt")}}, inputs)
        assert z["image"].dtype == z["text"].dtype == jnp.float32  # logits are formed in f32
        return losses.softmax_loss(z["image"], z["text"], p["t"])

    value, grads = jax.eval_shape(jax.value_and_grad(loss), params)
    assert value.dtype == jnp.float32
    assert set(grads) == {"img", "txt", "t"}
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(loss)(params))
    assert "bf16" in jaxpr  # the towers' matmuls do run in bfloat16


def test_config_scan_and_remat_reach_both_towers_unless_a_tower_sets_its_own():
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    config.model.scan, config.model.remat = True, "dots"
    config.model.text.remat = "full"  # alias of config.model.towers.text
    model = build_model(config, vocab_size=50)
    image, text = model.towers["image"], model.towers["text"]
    assert (image["scan"], image["remat"]) == (True, "dots")
    assert (text["scan"], text["remat"]) == (True, "full")
    # A tower without scan/remat fields (an MLP) does not get them.
    set_towers(config, {**config.model.towers, "features": {"type": "mlp", "width": 8}})
    towers = build_model(config, vocab_size=50).towers
    assert (towers["image"]["scan"], towers["text"]["remat"]) == (True, "full")
    assert "scan" not in towers["features"] and "remat" not in towers["features"]
