"""The multi-tower model: towers by type (vit, text, audio, mlp, sequence), outputs per
modality, only the towers passed run, objective scalars outside the model, dtypes, and
logical axes for every param of the new towers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl.losses.objectives import make_objective, objective_config
from multimodal_ssl.models import MultiTower, l2_normalize
from multimodal_ssl.models.layout import unannotated
from multimodal_ssl.models.towers import tower_class
from tests.test_models import KEY, TINY, _images, _params_apply, _shapes, _tokens

# ---------------------------------------------------------------- multi-tower model

IMAGE_TOWER = {"type": "vit", **TINY, "patch_size": 4, "pool": "map"}
TEXT_TOWER = {"type": "text", **TINY, "vocab_size": 50, "max_len": 6, "pool": "last"}


def _multi_tower(**kw):
    return MultiTower(towers={"image": IMAGE_TOWER, "text": TEXT_TOWER}, embed_dim=8, **kw)


def _spectrograms(b=2, frames=12, n_mels=8, seed=3):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, frames, n_mels)), jnp.float32)


@pytest.fixture(scope="module")
def tower_params():
    """Really initialised params of ``_multi_tower()`` (compiled once for the module)."""
    inputs = {"image": _images(b=4), "text": _tokens(b=4)}
    return jax.jit(_multi_tower().init)(KEY, inputs)["params"]


def test_multi_tower_outputs_params_and_single_tower_calls(tower_params):
    model, params = _multi_tower(), tower_params
    images, tokens = _images(b=4), _tokens(b=4)
    assert set(params) == {"img", "txt"}  # t and b belong to the objective
    assert "head" in params["img"] and "head" in params["txt"]
    apply = jax.jit(model.apply)
    out = apply({"params": params}, {"image": images, "text": tokens})
    assert set(out) == {"image", "text"}
    zimg, ztxt = out["image"], out["text"]
    assert zimg.shape == ztxt.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-6)
    only_img = apply({"params": params}, {"image": images})
    only_txt = apply({"params": params}, {"text": tokens})
    assert set(only_img) == {"image"} and set(only_txt) == {"text"}
    np.testing.assert_allclose(only_img["image"], zimg, atol=1e-6)
    np.testing.assert_allclose(only_txt["text"], ztxt, atol=1e-6)


def test_sigmoid_objective_owns_t_and_b():
    objective = make_objective(
        objective_config("sigmoid", t_init=1.5, b_init=-3.0), ("image", "text")
    )
    scalars = objective.init_params()
    assert set(scalars) == {"t", "b"}
    assert all(x.shape == () and x.dtype == jnp.float32 for x in scalars.values())
    assert float(scalars["t"]) == pytest.approx(1.5) and float(scalars["b"]) == -3.0
    defaults = make_objective(objective_config("sigmoid"), ("image", "text")).init_params()
    assert float(defaults["t"]) == pytest.approx(math.log(10.0)) and float(defaults["b"]) == -10.0


def test_l2_normalize():
    z = jnp.asarray([[3.0, 4.0], [0.0, 0.0]], jnp.bfloat16)
    out = l2_normalize(z)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)
    grads = jax.grad(lambda x: jnp.sum(l2_normalize(x) * jnp.asarray([1.0, 2.0])))(z)
    assert bool(jnp.isfinite(grads.astype(jnp.float32)).all())  # zero rows: finite gradient
    # d/dz <w, z/|z|> = (w - <w, u> u) / |z| with u = z/|z| = (0.6, 0.8), w = (1, 2).
    np.testing.assert_allclose(grads[0].astype(jnp.float32), [-0.064, 0.048], atol=1e-3)


def test_headless_tower_must_match_embed_dim():
    images = {"image": _images()}
    headless = {"type": "vit", **TINY, "patch_size": 4, "num_classes": None}
    ok = MultiTower(towers={"image": headless}, embed_dim=16)
    params, out = _shapes(ok, images)
    assert out["image"].shape == (2, 16) and "head" not in params["img"]
    bad = MultiTower(towers={"image": headless}, embed_dim=8)
    with pytest.raises(ValueError, match=r"config.model.towers.image: tower output has dim 16"):
        _shapes(bad, images)


def test_bf16_compute_keeps_f32_params_and_outputs(tower_params):
    inputs = {"image": _images(b=4), "text": _tokens(b=4)}
    f32, bf16 = _multi_tower(), _multi_tower(dtype="bfloat16")
    params_bf16, _ = _shapes(bf16, inputs)
    assert {x.dtype for x in jax.tree.leaves(params_bf16)} == {jnp.dtype(jnp.float32)}
    ref = jax.jit(f32.apply)({"params": tower_params}, inputs)
    out = jax.jit(bf16.apply)({"params": tower_params}, inputs)
    images = {"image": inputs["image"]}
    jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply({"params": p}, images))(tower_params))
    assert "bf16" in jaxpr  # the matmuls really run in bfloat16
    for modality in ("image", "text"):
        z = out[modality]
        assert z.dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-6)
        np.testing.assert_allclose(z, ref[modality], atol=0.05)


AUDIO_TOWER = {"type": "audio", **TINY, "patch_size": 4}
MLP_TOWER = {"type": "mlp", "width": 16, "depth": 2, "mlp_dim": 32}
SEQUENCE_TOWER = {"type": "sequence", **TINY, "max_len": 10, "pool": "map"}


def test_three_towers_embed_each_modality_and_run_only_those_passed():
    model = MultiTower(
        towers={"image": IMAGE_TOWER, "text": TEXT_TOWER, "audio": AUDIO_TOWER}, embed_dim=8
    )
    inputs = {"image": _images(b=3), "text": _tokens(b=3), "audio": _spectrograms(b=3)}
    params, out = _params_apply(model, inputs)
    assert set(params) == {"img", "txt", "audio"}
    # One-channel [n_mels, frames] "image": 8 x 12 mel bins x frames -> 2 x 3 patches.
    assert params["audio"]["embedding"]["kernel"].shape == (4, 4, 1, 16)
    assert set(out) == {"image", "text", "audio"}
    for z in out.values():
        assert z.shape == (3, 8) and z.dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, atol=1e-5)
    assert np.abs(out["audio"] - out["image"]).max() > 1e-3
    # Audio alone needs only the audio subtree: the other towers are not even built.
    alone = jax.jit(model.apply)({"params": {"audio": params["audio"]}}, {"audio": inputs["audio"]})
    assert set(alone) == {"audio"}
    np.testing.assert_allclose(alone["audio"], out["audio"], atol=1e-6)


@pytest.mark.parametrize(
    "tower,x,match",
    [
        (MLP_TOWER, jnp.zeros((3, 5)), None),
        (MLP_TOWER, jnp.zeros((3, 5, 2)), r"MlpTower: input must be \[b, features\]"),
        (SEQUENCE_TOWER, jnp.zeros((3, 7, 4)), None),
        (SEQUENCE_TOWER, jnp.zeros((3, 7)), r"SequenceTower: input must be \[b, steps <= 10"),
        (SEQUENCE_TOWER, jnp.zeros((3, 11, 4)), r"SequenceTower: input must be \[b, steps <= 10"),
        (AUDIO_TOWER, jnp.zeros((3, 8, 8, 1)), r"AudioTransformer: spectrogram must be"),
    ],
)
def test_feature_and_sequence_towers_shapes_and_input_ranks(tower, x, match):
    model = MultiTower(towers={"m": tower}, embed_dim=8)
    if match is not None:
        with pytest.raises(ValueError, match=match):
            _shapes(model, {"m": x})
        return
    params, out = _shapes(model, {"m": x})
    assert set(params) == {"m"} and out["m"].shape == (3, 8) and out["m"].dtype == jnp.float32
    headless = tower_class(tower["type"])(**{k: v for k, v in tower.items() if k != "type"})
    _, z = _shapes(headless, x)
    assert z.shape == (3, 16)  # no head: the tower's width


@pytest.mark.parametrize(
    "tower,x",
    [
        (AUDIO_TOWER, _spectrograms()),
        ({**AUDIO_TOWER, "pool": "map", "scan": True}, _spectrograms()),
        (MLP_TOWER, jnp.zeros((2, 5))),
        (SEQUENCE_TOWER, jnp.zeros((2, 7, 4))),
        ({**SEQUENCE_TOWER, "pool": "mean", "scan": True}, jnp.zeros((2, 7, 4))),
    ],
)
def test_every_param_of_the_new_towers_has_logical_axes(tower, x):
    params, _ = _shapes(MultiTower(towers={"m": tower}, embed_dim=8), {"m": x})
    assert unannotated(params) == []
