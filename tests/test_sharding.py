"""Mesh construction from config sizes, host->global batches, parameter and optimizer-state
shardings from logical axes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from multimodal_ssl import config as config_lib
from multimodal_ssl.losses.objectives import make_objective, objective_config
from multimodal_ssl.models import MultiTower
from multimodal_ssl.models.layout import path_str, unannotated
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import (
    batch_sharding,
    check_global_batch,
    follow_params,
    make_mesh,
    param_shardings,
    param_spec,
    replicated,
    resolve_mesh_shape,
    to_global,
)
from tests.test_train import ROOT


@pytest.mark.parametrize(
    "sizes, n, expected",
    [
        ({"data": -1, "fsdp": 1, "model": 1}, 8, (8, 1, 1)),
        ({"data": 2, "fsdp": -1, "model": 2}, 8, (2, 2, 2)),
        ({"data": -1}, 1, (1, 1, 1)),
        ({"data": 4, "fsdp": 1, "model": 2}, 8, (4, 1, 2)),
    ],
)
def test_resolve_mesh_shape(sizes, n, expected):
    assert resolve_mesh_shape(sizes, n) == expected


@pytest.mark.parametrize(
    "sizes, n, message",
    [
        ({"data": 3, "fsdp": 1, "model": 1}, 8, "needs 3 devices, but 8 are available"),
        ({"data": -1, "fsdp": 3, "model": 1}, 8, "not divisible by 3"),
    ],
)
def test_resolve_mesh_shape_errors(sizes, n, message):
    with pytest.raises(ValueError, match=message):
        resolve_mesh_shape(sizes, n)


def test_batch_is_split_over_data_and_fsdp():
    mesh = make_mesh({"data": 2, "fsdp": 2, "model": 2}, jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
    batch = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    out = to_global(batch, mesh)["x"]
    assert out.sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(out), batch["x"])
    shard_rows = {s.data.shape[0] for s in out.addressable_shards}
    assert shard_rows == {4}  # 16 rows over 4 batch shards, replicated over model


def test_global_batch_must_divide_over_batch_shards():
    mesh = make_mesh({"data": 4, "fsdp": 1, "model": 2}, jax.devices()[:8])
    assert check_global_batch(8, mesh) == 8
    with pytest.raises(ValueError, match="config.batch_size: 6 is not divisible by the 4"):
        check_global_batch(6, mesh)


# ---------------------------------------------------------------- parameter shardings


def _mesh(**sizes):
    return make_mesh({"data": 1, "fsdp": 1, "model": 1, **sizes}, jax.devices()[:8])


RULES = (("heads", "model"), ("mlp", "model"))


@pytest.mark.parametrize(
    "shape, axes, sizes, min_size, expected",
    [
        # tensor parallel: mlp hidden / heads over model
        ((32, 64), ("embed", "mlp"), {"data": 4, "model": 2}, 0, (None, "model")),
        ((32, 2, 16), ("embed", "heads", "kv"), {"data": 4, "model": 2}, 0, (None, "model", None)),
        # heads not divisible by model: replicated
        ((32, 3, 16), ("embed", "heads", "kv"), {"data": 4, "model": 2}, 0, (None, None, None)),
        # FSDP: the largest divisible remaining dim
        ((64, 32), ("mlp", "embed"), {"fsdp": 8}, 0, ("fsdp", None)),
        ((257, 32), ("vocab", "embed"), {"fsdp": 8}, 0, (None, "fsdp")),
        ((32, 64), ("embed", "mlp"), {"data": 2, "fsdp": 2, "model": 2}, 0, ("fsdp", "model")),
        # too small for FSDP, nothing divisible, stacked layers never FSDP-sharded
        ((32, 64), ("embed", "mlp"), {"fsdp": 8}, 4096, (None, None)),
        ((3, 5), ("embed", "mlp"), {"fsdp": 8}, 0, (None, None)),
        (
            (16, 32, 64),
            ("layers", "embed", "mlp"),
            {"fsdp": 2, "model": 4},
            0,
            (None, "fsdp", "model"),
        ),
        ((), (), {"fsdp": 8}, 0, ()),
    ],
)
def test_param_spec(shape, axes, sizes, min_size, expected):
    spec = param_spec(shape, axes, _mesh(**sizes), RULES, min_size)
    assert (*spec, *[None] * (len(shape) - len(spec))) == expected


def _tiny_state(image=None, text=None, tx=None):
    """Abstract params (towers and the sigmoid objective's t, b, as in the train state)
    and optimizer state of a depth-2 image/text model (no compile)."""
    sizes = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2}
    text = {"variant": "mu", **sizes, "vocab_size": 50, "max_len": 8, **(text or {})}
    model = MultiTower(
        towers={
            "image": {"type": "vit", "variant": "mu/8", **sizes, **(image or {})},
            "text": {"type": "text", **text},
        },
        embed_dim=16,
    )
    inputs = {"image": jnp.zeros((1, 16, 16, 3)), "text": jnp.zeros((1, 8), jnp.int32)}
    objective = make_objective(objective_config("sigmoid"), ("image", "text"))
    params = {
        **jax.eval_shape(model.init, jax.random.key(0), inputs)["params"],
        **jax.eval_shape(objective.init_params),
    }
    return params, jax.eval_shape((tx or optax.adamw(1e-3)).init, params)


@pytest.mark.parametrize(
    "image, text",
    [
        ({}, {}),
        ({"scan": True}, {"scan": True}),
        ({"pool": "gap", "posemb": "sincos2d"}, {"pool": "map"}),
        ({"pool": "tok", "num_classes": None, "width": 16}, {"pool": "first"}),
    ],
)
def test_every_param_has_logical_axes(image, text):
    if image.get("num_classes", 1) is None:  # no image head: width must equal embed_dim
        image = {**image, "width": 16}
    params, _ = _tiny_state(image, text)
    assert unannotated(params) == []


def test_params_and_adam_state_follow_the_rules_on_a_scanned_model():
    params, opt_state = _tiny_state({"scan": True}, {"scan": True})
    mesh = _mesh(data=2, fsdp=2, model=2)
    shardings = param_shardings(params, mesh, RULES, fsdp_min_size=0)
    mlp = shardings["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert mlp.spec == P(None, "fsdp", "model")  # [layers, embed, mlp]
    assert shardings["t"].spec == P()
    opt = follow_params(opt_state, params, shardings, replicated(mesh))
    assert opt[0].mu["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"] == mlp
    assert opt[0].count.spec == P()


def test_factored_optimizer_state_falls_back_to_replicated():
    params, opt_state = _tiny_state(tx=optax.adafactor(1e-3, min_dim_size_to_factor=8))
    mesh = _mesh(fsdp=8)
    shardings = param_shardings(params, mesh, RULES, fsdp_min_size=0)
    opt = follow_params(opt_state, params, shardings, replicated(mesh))
    kernel = "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"  # [32, 64]
    moments = [
        (x.shape, s.spec)
        for (path, x), s in zip(
            jax.tree_util.tree_leaves_with_path(opt_state), jax.tree.leaves(opt), strict=True
        )
        if path_str(path).endswith(kernel)
    ]
    assert sorted(shape for shape, _ in moments) == [(1,), (32,), (64,)]  # v, v_row, v_col
    assert all(spec == P() for _, spec in moments)  # shapes differ from the param's
    bias = "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias"  # [64]: unfactored v
    moments = [
        (x.shape, s.spec)
        for (path, x), s in zip(
            jax.tree_util.tree_leaves_with_path(opt_state), jax.tree.leaves(opt), strict=True
        )
        if path_str(path).endswith(bias)
    ]
    assert sorted(moments, key=str) == [((1,), P()), ((1,), P()), ((64,), P("fsdp"))]


def test_rule_naming_an_unknown_mesh_axis_is_rejected():
    params, _ = _tiny_state()
    with pytest.raises(ValueError, match=r"config.sharding.rules: \('mlp', 'tensor'\)"):
        param_shardings(params, _mesh(data=8), (("mlp", "tensor"),), 0)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("sharding.rules", (("mlp", "tensor"),), "config.sharding.rules: ('mlp', 'tensor')"),
        ("sharding.fsdp_min_size", -1, "config.sharding.fsdp_min_size: must be >= 0"),
        ("optim.microbatches", 0, "config.optim.microbatches: must be > 0"),
        ("model.remat", "everything", "config.model.remat: 'everything' is not one of"),
    ],
)
def test_config_validation_of_scale_out_keys(key, value, message):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        config_lib.validate(config)
