"""Dense SigLIP / CLIP losses against the float64 numpy reference and known answers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from loss_harness import loss_args, value_and_grads
from loss_reference import (
    embeddings,
    finite_difference,
    sigmoid_reference,
    softmax_reference,
)

from multimodal_ssl.losses import get_loss, sigmoid_loss, softmax_loss

REFERENCE = {"sigmoid": sigmoid_reference, "softmax": softmax_reference}


def test_reference_gradients_match_finite_differences():
    for name in ("sigmoid", "softmax"):
        args = loss_args(name, 4, 3, t=math.log(10.0), b=-2.0, dtype=np.float64)
        ref = REFERENCE[name]
        _, grads = ref(**args)
        numeric = finite_difference(lambda ref=ref, **a: ref(**a)[0], args)
        for k in args:
            np.testing.assert_allclose(grads[k], numeric[k], rtol=1e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize(
    "t, b",
    [(math.log(10.0), -10.0), (math.log(1000.0), -5.0), (math.log(1000.0), 900.0)],
    ids=["moderate", "logits1e3", "bias900"],
)
def test_global_matches_reference_float64(x64, name, t, b):
    args = loss_args(name, 8, 5, t, b, seed=1, dtype=np.float64)
    value, grads = value_and_grads(name, args)
    ref_value, ref_grads = REFERENCE[name](**args)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for k in args:
        np.testing.assert_allclose(
            grads[k], ref_grads[k], rtol=1e-6, atol=1e-6 * np.abs(ref_grads[k]).max(), err_msg=k
        )


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_all_gather_matches_reference_float64(x64, name):
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    args = loss_args(name, 8, 5, math.log(1000.0), -5.0, seed=2, dtype=np.float64)
    value, grads = value_and_grads(name, args, impl="all_gather", mesh=mesh)
    ref_value, ref_grads = REFERENCE[name](**args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for k in args:
        np.testing.assert_allclose(
            grads[k], ref_grads[k], rtol=1e-6, atol=1e-6 * np.abs(ref_grads[k]).max(), err_msg=k
        )


def test_known_answers_on_orthonormal_pairs():
    n = 4
    x = y = jnp.eye(n)  # logits = exp(t) * I
    t, b = math.log(2.0), -1.0  # positive logit 1, negative logit -1
    expected_sigmoid = n * math.log1p(math.exp(-1.0)) + (n * n - n) * math.log1p(math.exp(-1.0))
    np.testing.assert_allclose(sigmoid_loss(x, y, t, b), expected_sigmoid / n, rtol=1e-6)
    expected_softmax = math.log(math.e**2 + n - 1) - 2.0  # each row/col: lse - positive
    np.testing.assert_allclose(softmax_loss(x, y, t), expected_softmax, rtol=1e-6)


def test_bfloat16_inputs_accumulate_in_float32():
    x, y = embeddings(16, 8, seed=3)
    x16, y16 = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    for value32, value16 in [
        (sigmoid_loss(x, y, 2.3, -10.0), sigmoid_loss(x16, y16, 2.3, -10.0)),
        (softmax_loss(x, y, 2.3), softmax_loss(x16, y16, 2.3)),
    ]:
        assert value16.dtype == jnp.float32
        np.testing.assert_allclose(value16, value32, rtol=2e-2)


def test_global_with_explicitly_sharded_inputs_under_jit():
    mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "model"))
    x, y = embeddings(8, 4, seed=4)
    sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
    sig = jax.jit(lambda a, c: sigmoid_loss(a, c, 2.3, -10.0))(xs, ys)
    soft = jax.jit(lambda a, c: softmax_loss(a, c, 2.3))(xs, ys)
    np.testing.assert_allclose(sig, sigmoid_reference(x, y, 2.3, -10.0)[0], rtol=1e-5)
    np.testing.assert_allclose(soft, softmax_reference(x, y, 2.3)[0], rtol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: sigmoid_loss(x, x[:, :3], 0.0, 0.0), "same shape"),
        (lambda x: sigmoid_loss(x[0], x[0], 0.0, 0.0), "x must be"),
        (lambda x: softmax_loss(x, x.astype(jnp.int32), 0.0), "y must be floating"),
        (lambda x: softmax_loss(x, x, jnp.zeros(2)), "t must be a scalar"),
        (lambda x: sigmoid_loss(x, x, 0.0, jnp.zeros(2)), "b must be a scalar"),
        (lambda x: softmax_loss(x, x, 0.0, impl="dense"), "impl must be one of"),
        (lambda x: softmax_loss(x, x, 0.0, impl="ring"), "needs mesh"),
        (lambda x: sigmoid_loss(x, x, 0.0, 0.0, impl="all_gather"), "needs mesh"),
        (lambda x: softmax_loss(x, x, 0.0, chunk_size=0), "chunk_size must be"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(jnp.ones((8, 4)))


def test_bad_mesh_arguments_raise():
    x = jnp.ones((6, 4))
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    for impl in ("global", "all_gather", "ring"):
        with pytest.raises(ValueError, match="batch 6 of x and y must be divisible by the 4"):
            softmax_loss(x, x, 0.0, impl=impl, mesh=mesh)
    with pytest.raises(ValueError, match="batch_axes"):
        softmax_loss(x, x, 0.0, impl="ring", mesh=mesh, batch_axes=("fsdp",))
    other = jax.make_mesh((4,), ("replica",), devices=jax.devices()[:4])
    with pytest.raises(ValueError, match="batch_axes"):
        softmax_loss(x, x, 0.0, impl="ring", mesh=other)


def test_registry():
    assert get_loss("sigmoid") is sigmoid_loss
    assert get_loss("softmax") is softmax_loss
    with pytest.raises(ValueError, match="unknown loss name 'dcl'"):
        get_loss("dcl")
