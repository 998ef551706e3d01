"""Ring losses equal the dense ones and the float64 numpy reference (value and grads)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from loss_harness import loss_args, value_and_grads
from loss_reference import embeddings, sigmoid_reference, softmax_reference

from multimodal_ssl.losses import get_loss

REFERENCE = {"sigmoid": sigmoid_reference, "softmax": softmax_reference}
T_LARGE = math.log(1000.0)  # unit-norm embeddings: |logits| up to 1e3


def _mesh(w, auto=False):
    types = (AxisType.Auto,) if auto else None
    return jax.make_mesh((w,), ("data",), axis_types=types, devices=jax.devices()[:w])


def _assert_close(value, grads, ref_value, ref_grads, tol):
    """Value to ``tol`` relative; each gradient to ``tol`` of its largest entry (or of 1e-6)."""
    np.testing.assert_allclose(value, ref_value, rtol=tol)
    for k, ref in ref_grads.items():
        ref = np.asarray(ref, np.float64)
        atol = tol * max(np.abs(ref).max(), 1e-6)
        np.testing.assert_allclose(
            np.asarray(grads[k], np.float64), ref, rtol=tol, atol=atol, err_msg=k
        )


@pytest.mark.parametrize("chunk", [None, 2], ids=["unchunked", "chunk2"])
@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("w", [1, 2, 3, 4, 8])
def test_ring_matches_reference_and_global(w, name, chunk):
    """|logits| up to ~1e3 from integer embeddings (exact f32 logits), f32 to 1e-5."""
    args = loss_args(name, 4 * w, 8, 0.0, -300.0, seed=w, integer=True)
    assert np.abs(args["x"] @ args["y"].T).max() > 500
    value, grads = value_and_grads(name, args, impl="ring", mesh=_mesh(w), chunk_size=chunk)
    _assert_close(value, grads, *REFERENCE[name](**args), tol=1e-5)
    _assert_close(value, grads, *value_and_grads(name, args), tol=1e-5)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("w", [3, 8])
def test_ring_unit_norm_embeddings_at_scale_1000(w, name):
    """Trainer-like inputs at exp(t) = 1000: no overflow, and f32-limited agreement.

    An f32 logit of ~1e3 carries ~1e-4 of rounding (x . y to 1e-7, times 1000) that moves
    softmax probabilities by as much; every implementation has it, so 1e-4 here.
    """
    args = loss_args(name, 4 * w, 6, T_LARGE, -500.0, seed=w)
    value, grads = value_and_grads(name, args, impl="ring", mesh=_mesh(w), chunk_size=2)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads.values())
    _assert_close(value, grads, *REFERENCE[name](**args), tol=1e-4)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("w", [3, 8])
def test_ring_local_batch_one(w, name):
    args = loss_args(name, w, 5, math.log(10.0), -10.0, seed=10 + w)
    value, grads = value_and_grads(name, args, impl="ring", mesh=_mesh(w), chunk_size=4)
    _assert_close(value, grads, *REFERENCE[name](**args), tol=1e-5)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("w", [3, 4])
def test_ring_is_exact_in_float64(w, name):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        args = loss_args(name, 6 * w, 5, T_LARGE, 300.0, seed=20 + w, dtype=np.float64)
        value, grads = value_and_grads(name, args, impl="ring", mesh=_mesh(w), chunk_size=3)
        assert value.dtype == jnp.float64
        _assert_close(value, grads, *REFERENCE[name](**args), tol=1e-10)
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_ring_bfloat16_inputs(name):
    args = loss_args(name, 16, 8, math.log(10.0), -10.0, seed=30)
    args16 = {k: jnp.asarray(v, jnp.bfloat16) if k in "xy" else v for k, v in args.items()}
    value, grads = value_and_grads(name, args16, impl="ring", mesh=_mesh(4), chunk_size=2)
    dense_value, dense_grads = value_and_grads(name, args16)
    assert value.dtype == jnp.float32 and grads["x"].dtype == jnp.bfloat16
    np.testing.assert_allclose(value, dense_value, rtol=1e-5)
    np.testing.assert_allclose(value, REFERENCE[name](**args)[0], rtol=2e-2)
    for k in args:
        ref = np.asarray(dense_grads[k], np.float32)
        np.testing.assert_allclose(
            np.asarray(grads[k], np.float32), ref, atol=1e-2 * abs(ref).max()
        )


@pytest.mark.parametrize("impl", ["global", "all_gather", "ring"])
def test_auto_mesh(impl):
    args = loss_args("sigmoid", 12, 4, math.log(10.0), -10.0, seed=40)
    value, grads = value_and_grads("sigmoid", args, impl=impl, mesh=_mesh(4, auto=True))
    _assert_close(value, grads, *sigmoid_reference(**args), tol=1e-5)


@pytest.mark.parametrize("shape", [(4, 2, 1), (2, 2, 2)])
def test_ring_in_jit_with_sharded_batch(shape):
    """Trainer setting: x, y sharded P(("data", "fsdp"), None); 'model' replicates."""
    mesh = jax.make_mesh(shape, ("data", "fsdp", "model"))
    x, y = embeddings(16, 6, seed=50)
    batch = NamedSharding(mesh, P(("data", "fsdp"), None))
    x, y = jax.device_put(x, batch), jax.device_put(y, batch)
    t, b = (jax.device_put(jnp.float32(v), NamedSharding(mesh, P())) for v in (T_LARGE, -8.0))

    def step(impl):
        def loss(x, y, t, b):
            kw = {"impl": impl, "mesh": mesh, "chunk_size": 2 if impl == "ring" else None}
            return get_loss("sigmoid")(x, y, t, b, **kw) + get_loss("softmax")(x, y, t, **kw)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(x, y, t, b)

    (ring_value, ring_grads), (value, grads) = step("ring"), step("global")
    np.testing.assert_allclose(ring_value, value, rtol=1e-5)
    for ring_grad, grad in zip(ring_grads, grads, strict=True):
        scale = np.abs(np.asarray(grad)).max()
        np.testing.assert_allclose(ring_grad, grad, rtol=1e-5, atol=1e-5 * scale)


def test_ring_exchanges_blocks_without_gathering():
    args = loss_args("softmax", 16, 4, 0.0, 0.0, seed=60)
    loss = get_loss("softmax")
    fn = jax.value_and_grad(lambda x, y, t: loss(x, y, t, impl="ring", mesh=_mesh(8)))
    jaxpr = str(jax.make_jaxpr(fn)(*args.values()))
    assert "ppermute" in jaxpr and "all_gather" not in jaxpr


def test_chunk_size_must_divide_local_batch():
    args = loss_args("sigmoid", 12, 4, 0.0, 0.0, seed=70)
    with pytest.raises(ValueError, match="chunk_size 2 must divide the local batch 3"):
        get_loss("sigmoid")(*args.values(), impl="ring", mesh=_mesh(4), chunk_size=2)
