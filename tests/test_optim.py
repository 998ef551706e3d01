"""Schedules, weight-decay masking and clipping of multimodal_ssl.optim."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from multimodal_ssl.config import base_config
from multimodal_ssl.optim import (
    kernel_mask,
    make_optimizer,
    make_schedule,
    muon_dimension_numbers,
)


def _optim(**overrides) -> ml_collections.ConfigDict:
    cfg = base_config().optim
    cfg.update(overrides)
    return cfg


def test_warmup_then_cosine_to_zero():
    schedule = make_schedule(_optim(lr=1.0, warmup_steps=10, schedule="cosine"), total_steps=110)
    np.testing.assert_allclose(schedule(0), 0.0)
    np.testing.assert_allclose(schedule(5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(schedule(10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.5, rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-7)


def test_rsqrt_schedule():
    schedule = make_schedule(_optim(lr=2.0, warmup_steps=4, schedule="rsqrt"), total_steps=100)
    np.testing.assert_allclose(schedule(4), 2.0, rtol=1e-6)
    np.testing.assert_allclose(schedule(4 + 12), 2.0 * np.sqrt(4 / 16), rtol=1e-6)


def test_constant_without_warmup():
    schedule = make_schedule(_optim(lr=0.3, warmup_steps=0, schedule="constant"), 10)
    np.testing.assert_allclose([schedule(0), schedule(9)], [0.3, 0.3], rtol=1e-6)


PARAMS = {
    "img": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}},
    "pos_embedding": jnp.ones((3, 2)),
    "t": jnp.ones(()),
    "b": jnp.ones(()),
}


def test_kernel_mask_selects_only_kernels():
    mask = kernel_mask(PARAMS)
    assert mask["img"]["Dense_0"] == {"kernel": True, "bias": False}
    assert not mask["pos_embedding"] and not mask["t"] and not mask["b"]


@pytest.mark.parametrize("name", ["adamw", "adafactor", "muon"])
def test_weight_decay_touches_kernels_only(name):
    """With zero gradients only decoupled weight decay moves params."""
    tx, _ = make_optimizer(
        _optim(name=name, lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5), 10
    )
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    assert np.all(np.asarray(new["img"]["Dense_0"]["kernel"]) < 1.0)
    for leaf in (new["img"]["Dense_0"]["bias"], new["pos_embedding"], new["t"], new["b"]):
        np.testing.assert_array_equal(leaf, np.ones_like(leaf))


def test_global_norm_clipping():
    """Clipping at 1 rescales a large gradient to unit norm before adamw sees it.

    Adam's first step is scale-invariant, so two steps are compared: a large gradient
    (clipped) then a small one (not clipped); the clipped run equals the plain run fed
    the pre-normalised first gradient, and differs from the plain run fed the raw one.
    """
    base = {"lr": 1.0, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0}
    clipped_tx, _ = make_optimizer(_optim(**base, grad_clip=1.0), 10)
    plain_tx, _ = make_optimizer(_optim(**base), 10)
    params = {"a": jnp.zeros((4,))}
    big = {"a": jnp.array([10.0, -20.0, 5.0, 1.0])}
    small = {"a": jnp.array([0.1, 0.2, -0.3, 0.05])}
    unit = jax.tree.map(lambda g: g / optax.tree.norm(big), big)

    def second_update(tx, first, second):
        state = tx.init(params)
        _, state = tx.update(first, state, params)
        return tx.update(second, state, params)[0]["a"]

    clipped = second_update(clipped_tx, big, small)
    np.testing.assert_allclose(clipped, second_update(plain_tx, unit, small), rtol=1e-6)
    assert not np.allclose(clipped, second_update(plain_tx, big, small))


def test_muon_dimension_numbers_group_each_kernel_into_a_matrix():
    dims = optax.contrib.MuonDimensionNumbers
    block = {
        "MultiHeadDotProductAttention_0": {
            "query": {"kernel": jnp.ones((16, 4, 8)), "bias": jnp.ones((4, 8))},
            "out": {"kernel": jnp.ones((4, 8, 16)), "bias": jnp.ones(16)},
        },
        "MlpBlock_0": {"Dense_0": {"kernel": jnp.ones((16, 64))}},
    }
    params = {
        "img": {
            "embedding": {"kernel": jnp.ones((8, 8, 3, 16)), "bias": jnp.ones(16)},
            "pos_embedding": jnp.ones((1, 5, 16)),
            "Transformer": {"encoderblock_0": block},
            "head": {"kernel": jnp.ones((16, 12))},
        },
        "txt": {  # scanned layout: a leading [layers] axis on every block param
            "Embed_0": {"embedding": jnp.ones((256, 16))},
            "Encoder_0": {"encoderblock": jax.tree.map(lambda x: jnp.stack([x] * 3), block)},
        },
        "custom": {"kernel": jnp.ones((5, 7)), "kernel3": {"kernel": jnp.ones((2, 5, 7))}},
        "t": jnp.ones(()),
    }
    spec = muon_dimension_numbers(params)
    img, blk = spec["img"], spec["img"]["Transformer"]["encoderblock_0"]
    assert img["embedding"]["kernel"] == dims((0, 1, 2), 3)
    assert img["head"]["kernel"] == dims(0, 1)
    assert blk["MultiHeadDotProductAttention_0"]["query"]["kernel"] == dims(0, (1, 2))
    assert blk["MultiHeadDotProductAttention_0"]["out"]["kernel"] == dims((0, 1), 2)
    assert blk["MlpBlock_0"]["Dense_0"]["kernel"] == dims(0, 1)
    scanned = spec["txt"]["Encoder_0"]["encoderblock"]
    assert scanned["MultiHeadDotProductAttention_0"]["query"]["kernel"] == dims(1, (2, 3))
    assert scanned["MultiHeadDotProductAttention_0"]["out"]["kernel"] == dims((1, 2), 3)
    assert scanned["MlpBlock_0"]["Dense_0"]["kernel"] == dims(1, 2)
    assert spec["custom"]["kernel"] == dims(0, 1)
    for leaf in (img["embedding"]["bias"], img["pos_embedding"],
                 blk["MultiHeadDotProductAttention_0"]["query"]["bias"],
                 spec["txt"]["Embed_0"]["embedding"], spec["custom"]["kernel3"]["kernel"],
                 spec["t"]):
        assert leaf is None


def test_muon_orthogonalises_matrix_updates_and_adams_the_rest():
    """A badly conditioned gradient of a [in, heads, head_dim] kernel becomes an update
    whose [in, heads*head_dim] matrix has near-equal singular values (Newton-Schulz
    leaves them within ~[0.7, 1.2] of 1) at AdamW's RMS (0.2 * sqrt(max fan) per unit
    singular value); a bias gets (Nesterov) Adam's first step, -lr * (1 + b1 / (1 + b1))
    * sign(g)."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    v, _ = np.linalg.qr(rng.normal(size=(32, 16)))
    grad_matrix = (u * np.logspace(0, -2, 16)) @ v.T  # [16, 32], condition number 100
    params = {"query": {"kernel": jnp.zeros((16, 4, 8)), "bias": jnp.zeros((4, 8))}}
    grads = {
        "query": {
            "kernel": jnp.asarray(grad_matrix.reshape(16, 4, 8), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
        }
    }
    lr = 0.01
    tx, _ = make_optimizer(
        _optim(name="muon", lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0), 10
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    matrix = -np.asarray(updates["query"]["kernel"]).reshape(16, 32) / lr
    singular = np.linalg.svd(matrix, compute_uv=False) / (0.2 * np.sqrt(32))
    assert singular.min() > 0.6 and singular.max() < 1.25, singular
    np.testing.assert_allclose(  # same singular vectors as the gradient: U V^T
        matrix / np.linalg.norm(matrix), (u @ v.T) / np.linalg.norm(u @ v.T), atol=0.05
    )
    np.testing.assert_allclose(
        updates["query"]["bias"], -lr * (1 + 0.9 / 1.9) * np.sign(grads["query"]["bias"]),
        rtol=1e-4,
    )
