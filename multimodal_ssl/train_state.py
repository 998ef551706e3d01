"""Train state, its initialisation, the jitted train step and embedding functions.

Everything here is a pure function of the config, the model and the mesh; the loop
in ``train.py`` only feeds batches and writes results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from multimodal_ssl import losses
from multimodal_ssl.models.towers import TwoTower
from multimodal_ssl.sharding import batch_sharding, batch_size_per_step, replicated, tree_shardings


@flax.struct.dataclass
class TrainState:
    """``step``: i32 scalar; ``params``: f32 pytree; ``opt_state``: optax state."""

    step: jax.Array
    params: Any
    opt_state: Any


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> TwoTower:
    """The two-tower model of ``config.model``; the text tower gets the tokenizer's
    vocabulary size and ``data.max_text_len`` unless the config sets them."""
    text = {"vocab_size": vocab_size, "max_len": config.data.max_text_len}
    text.update(config.model.text.to_dict())
    return TwoTower(
        image=config.model.image.to_dict(),
        text=text,
        embed_dim=config.model.embed_dim,
        t_init=config.model.t_init,
        b_init=config.model.b_init,
        dtype=config.model.dtype,
    )


def dummy_inputs(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    size = config.data.image_size
    return {
        "image": jnp.zeros((1, size, size, 3), jnp.float32),
        "text": jnp.zeros((1, config.data.max_text_len), jnp.int32),
    }


def init_state(
    model: TwoTower,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> TrainState:
    """Initialises params from ``config.seed`` directly into their shardings."""

    def init_fn(rng):
        params = model.init(rng, **dummy_inputs(config))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_fn, rng)
    return jax.jit(init_fn, out_shardings=state_shardings(abstract, mesh))(rng)


def state_shardings(state: TrainState, mesh: Mesh) -> Any:
    """Sharding of every leaf of the train state (replicated for now)."""
    return tree_shardings(state, replicated(mesh))


def contrastive_loss(
    loss_cfg: ml_collections.ConfigDict,
    zimg: jax.Array,
    ztxt: jax.Array,
    t: jax.Array,
    b: jax.Array,
    mesh: Mesh,
) -> jax.Array:
    """``loss.name`` with ``loss.impl``/``chunk_size``; zimg, ztxt: [B, d] batch-sharded."""
    kwargs = {"impl": loss_cfg.impl, "mesh": mesh, "chunk_size": loss_cfg.chunk_size}
    if loss_cfg.name == "sigmoid":
        return losses.sigmoid_loss(zimg, ztxt, t, b, **kwargs)
    if loss_cfg.name == "softmax":
        return losses.softmax_loss(zimg, ztxt, t, **kwargs)
    raise ValueError(f"config.loss.name: unknown loss {loss_cfg.name!r}")


def make_train_step(
    model: TwoTower,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    abstract_state: TrainState,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """One jitted step with donated state.

    batch: ``{"image": f32 [B,H,W,3], "text": i32 [B,L]}`` sharded on the batch axes.
    Returns the new state and scalar metrics ``train/{loss,lr,t,b,grad_norm}``.
    """

    def loss_fn(params, batch):
        zimg, ztxt, out = model.apply({"params": params}, image=batch["image"], text=batch["text"])
        loss = contrastive_loss(config.loss, zimg, ztxt, out["t"], out["b"], mesh)
        return loss, out

    def step_fn(state: TrainState, batch):
        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "train/loss": loss,
            "train/lr": schedule(state.step),
            "train/t": out["t"],
            "train/b": out["b"],
            "train/grad_norm": optax.tree.norm(grads),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    shardings = state_shardings(abstract_state, mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )


class Embedder:
    """Jitted, batch-sharded embedding of images or token rows with given params.

    Inputs of any length are padded to a multiple of the batch shards, so the
    evaluators need not know the mesh. Outputs are numpy f32 ``[n, d]``, L2-normalised.
    """

    def __init__(self, model: TwoTower, mesh: Mesh):
        self._mesh = mesh
        self._shards = batch_size_per_step(mesh)
        self.params = None
        out = replicated(mesh)
        self._images = jax.jit(
            lambda p, x: model.apply({"params": p}, image=x)[0], out_shardings=out
        )
        self._texts = jax.jit(
            lambda p, x: model.apply({"params": p}, text=x)[1], out_shardings=out
        )

    def _run(self, fn, inputs: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs)
        n = len(inputs)
        padded = -(-n // self._shards) * self._shards
        if padded != n:
            pad = np.zeros((padded - n, *inputs.shape[1:]), inputs.dtype)
            inputs = np.concatenate([inputs, pad])
        x = jax.device_put(inputs, batch_sharding(self._mesh))
        return np.asarray(fn(self.params, x))[:n]

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """images: f32 [n, H, W, 3] in the model's value range -> [n, d]."""
        return self._run(self._images, images)

    def embed_texts(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: i32 [n, L] -> [n, d]."""
        return self._run(self._texts, tokens)
