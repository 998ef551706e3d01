"""Shared plumbing of the loss tests: argument dicts and jitted value-and-gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from loss_reference import embeddings, integer_embeddings

from multimodal_ssl.losses import get_loss

ARGNAMES = {"sigmoid": ("x", "y", "t", "b"), "softmax": ("x", "y", "t")}


def loss_args(name, n, d, t, b, seed=0, dtype=np.float32, integer=False):
    """The loss's positional arguments by name: x, y [n, d] (+ scalars t, b)."""
    x, y = integer_embeddings(n, d, seed) if integer else embeddings(n, d, seed, dtype)
    args = {"x": x, "y": y, "t": np.asarray(t, dtype), "b": np.asarray(b, dtype)}
    return {k: args[k] for k in ARGNAMES[name]}


def value_and_grads(name, args, **kw):
    """Jitted loss value and {argument name: gradient}."""
    fn = get_loss(name)
    value, grads = jax.jit(
        jax.value_and_grad(lambda *a: fn(*a, **kw), argnums=tuple(range(len(args))))
    )(*[jnp.asarray(v) for v in args.values()])
    return value, dict(zip(args, grads, strict=True))
