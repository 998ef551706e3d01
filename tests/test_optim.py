"""Schedules, weight-decay masking and clipping of multimodal_ssl.optim."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from multimodal_ssl.config import base_config
from multimodal_ssl.optim import kernel_mask, make_optimizer, make_schedule


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


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
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
