"""GradCache accumulation: 4 micro-batches give the full-batch loss and gradient (sigmoid and
softmax losses, global and ring implementations over 8 emulated devices), whereas the
naive sum of per-micro-batch losses does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl import gradcache, losses
from multimodal_ssl.sharding import batch_sharding, make_mesh

B, D_IN, D, M = 32, 12, 8, 4


def _params():
    rng = np.random.default_rng(0)
    tower = lambda: {"w1": rng.normal(size=(D_IN, 16)), "w2": rng.normal(size=(16, D))}  # noqa: E731
    params = {"img": tower(), "txt": tower(), "t": np.log(10.0), "b": -2.0}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def _batch():
    rng = np.random.default_rng(1)
    return {k: jnp.asarray(rng.normal(size=(B, D_IN)), jnp.float32) for k in ("image", "text")}


def _embed(params, batch):
    """Two row-wise MLP towers, L2-normalised: {"zimg", "ztxt"}: [b, D]."""

    def tower(p, x):
        h = jnp.tanh(x @ p["w1"]) @ p["w2"]
        return h / jnp.linalg.norm(h, axis=-1, keepdims=True)

    return {
        "zimg": tower(params["img"], batch["image"]),
        "ztxt": tower(params["txt"], batch["text"]),
    }


def _loss_fn(name, impl, mesh):
    def loss_fn(params, emb):
        kw = {"impl": impl, "mesh": mesh}
        if name == "sigmoid":
            loss = losses.sigmoid_loss(emb["zimg"], emb["ztxt"], params["t"], params["b"], **kw)
        else:
            loss = losses.softmax_loss(emb["zimg"], emb["ztxt"], params["t"], **kw)
        return loss, {"t": params["t"]}

    return loss_fn


def _assert_trees_close(got, want, rtol):
    for (path, g), w in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        g, w = np.asarray(g), np.asarray(w)
        err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)
        assert err <= rtol, (jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
@pytest.mark.parametrize("impl", ["global", "ring"])
def test_four_microbatches_give_the_full_batch_gradient(name, impl):
    mesh = make_mesh({"data": 8}, jax.devices()[:8])
    sharding = batch_sharding(mesh)
    params, batch = _params(), jax.device_put(_batch(), sharding)
    loss_fn = _loss_fn(name, impl, mesh)

    @jax.jit
    def both(params, batch):
        full = jax.value_and_grad(lambda p: loss_fn(p, _embed(p, batch)), has_aux=True)(params)
        cached = gradcache.value_and_grad(_embed, loss_fn, params, batch, M, sharding)
        return full, cached

    ((full_loss, _), full_grads), ((loss, aux), grads) = both(params, batch)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    assert float(aux["t"]) == pytest.approx(np.log(10.0))
    _assert_trees_close(grads, full_grads, rtol=1e-5)
    assert float(jnp.abs(grads["t"])) > 1e-4 and float(jnp.abs(grads["img"]["w1"]).max()) > 1e-4


def test_naive_microbatch_accumulation_differs():
    """The test above can fail: summing per-micro-batch losses (fewer negatives per
    positive) gives a clearly different gradient."""
    params, batch = _params(), _batch()
    loss_fn = _loss_fn("softmax", "global", None)
    micro = [jax.tree.map(lambda x, k=k: x[k::M], batch) for k in range(M)]

    def naive_loss(p):  # mean of the 4 micro-batch losses
        return sum(loss_fn(p, _embed(p, mb))[0] for mb in micro) / M

    full, naive = jax.jit(
        lambda p: (jax.grad(lambda q: loss_fn(q, _embed(q, batch))[0])(p), jax.grad(naive_loss)(p))
    )(params)
    w, n = np.asarray(full["img"]["w1"]), np.asarray(naive["img"]["w1"])
    assert np.max(np.abs(n - w)) / np.max(np.abs(w)) > 1e-2


def test_microbatches_must_divide_the_batch():
    params, batch = _params(), _batch()
    with pytest.raises(ValueError, match="config.optim.microbatches: batch of 32 rows"):
        jax.jit(
            lambda p, b: gradcache.value_and_grad(
                _embed, _loss_fn("softmax", "global", None), p, b, 5
            )
        )(params, batch)
