"""models.norm.LayerNorm equals flax's nn.LayerNorm (eps 1e-6, two-pass variance): the
same params, and the same outputs and gradients (x, scale, bias) against an independent
float64 numpy reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl.models.norm import LayerNorm


def numpy_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def numpy_grads(x, scale, bias, g, eps=1e-6):
    """Gradients of sum(g * LN(x)) by the textbook formulas, float64."""
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    n = x.shape[-1]
    gs = g * scale
    dx = rstd / n * (n * gs - gs.sum(-1, keepdims=True) - xhat * (gs * xhat).sum(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return dx, (g * xhat).sum(axes), g.sum(axes)


def _inputs(dtype, shape=(3, 5, 16)):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape)  # offset mean, so centring matters
    scale, bias = rng.normal(1, 0.5, shape[-1]), rng.normal(0, 0.5, shape[-1])
    g = rng.normal(size=shape)
    return [np.asarray(a, dtype) for a in (x, scale, bias, g)]


def _value_and_grads(module, x, scale, bias, g):
    """(LN(x), d/d(x, scale, bias) of sum(g * LN(x)))."""

    def f(x, scale, bias):
        y = module.apply({"params": {"scale": scale, "bias": bias}}, x)
        return (y * g).sum(), y

    (_, y), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
    return y, grads


def test_same_params_and_init_as_flax():
    x = jnp.ones((2, 4, 8))
    ours = LayerNorm().init(jax.random.key(0), x)
    flax_ln = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_ln)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(flax_ln), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == jnp.float32


def test_float64_matches_numpy_reference():
    with jax.enable_x64(True):
        x, scale, bias, g = _inputs(np.float64)
        y, (dx, dscale, dbias) = jax.jit(
            lambda *a: _value_and_grads(LayerNorm(dtype=jnp.float64), *a)
        )(x, scale, bias, g)
        np.testing.assert_allclose(y, numpy_layer_norm(x, scale, bias), rtol=1e-6, atol=1e-6)
        for ours, ref in zip((dx, dscale, dbias), numpy_grads(x, scale, bias, g), strict=True):
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_flax_layer_norm(dtype):
    """Same outputs and gradients as flax's LayerNorm at the compute dtype the towers use."""
    x, scale, bias, g = _inputs(np.float32)
    x = jnp.asarray(x, dtype)
    flax_ln = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype)
    y_ref, grads_ref = _value_and_grads(flax_ln, x, scale, bias, jnp.asarray(g, dtype))
    y, grads = _value_and_grads(LayerNorm(dtype=dtype), x, scale, bias, jnp.asarray(g, dtype))
    assert y.dtype == y_ref.dtype == dtype and grads[0].dtype == x.dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.float32(y), np.float32(y_ref), rtol=tol, atol=tol)
    for ours, ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(np.float32(ours), np.float32(ref), rtol=tol, atol=tol * 10)


def test_under_remat_and_vmap():
    """The custom backward composes with jax.checkpoint (the towers' remat) and vmap."""
    x, scale, bias, g = _inputs(np.float32)

    def loss(x):
        return (LayerNorm().apply({"params": {"scale": scale, "bias": bias}}, x) * g).sum()

    plain = jax.grad(loss)(x)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(x), plain, rtol=1e-5, atol=1e-6)
    per_row = jax.vmap(jax.grad(lambda xi, gi: (LayerNorm().apply(
        {"params": {"scale": scale, "bias": bias}}, xi) * gi).sum()))(x, g)
    np.testing.assert_allclose(per_row, plain, rtol=1e-5, atol=1e-6)
