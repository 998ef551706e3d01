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

from multimodal_ssl import gradcache, losses
from multimodal_ssl.models.towers import TwoTower
from multimodal_ssl.optim import merge_params, partition_frozen
from multimodal_ssl.sharding import (
    batch_sharding,
    batch_size_per_step,
    follow_params,
    param_shardings,
    replicated,
)


@flax.struct.dataclass
class TrainState:
    """``step``: i32 scalar; ``params``: f32 pytree; ``opt_state``: optax state."""

    step: jax.Array
    params: Any
    opt_state: Any


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> TwoTower:
    """The two-tower model of ``config.model``; the text tower gets the tokenizer's
    vocabulary size and ``data.max_text_len``, both towers ``model.scan``/``model.remat``,
    unless the tower's own dict sets them."""
    encoder = {"scan": config.model.scan, "remat": config.model.remat}
    text = {"vocab_size": vocab_size, "max_len": config.data.max_text_len, **encoder}
    text.update(config.model.text.to_dict())
    return TwoTower(
        image={**encoder, **config.model.image.to_dict()},
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
    imported: dict[str, Any] | None = None,
) -> TrainState:
    """Initialises params from ``config.seed`` directly into their shardings.

    ``imported``: top-level subtrees (``{"img": ...}``, from
    ``pretrained.init_from_config``) that replace the random ones.
    """
    imported = imported or {}

    def init_fn(rng, imported):
        params = {**model.init(rng, **dummy_inputs(config))["params"], **imported}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_fn, rng, imported)
    shardings = state_shardings(abstract, mesh, config.sharding)
    return jax.jit(init_fn, out_shardings=shardings)(rng, imported)


def state_shardings(state: TrainState, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
    """Sharding of every leaf of the train state: params by ``config.sharding`` rules
    (tensor parallel + FSDP, see ``sharding.param_shardings``), optimizer state following
    its params, the rest replicated."""
    params = param_shardings(state.params, mesh, cfg.rules, cfg.fsdp_min_size)
    return TrainState(
        step=replicated(mesh),
        params=params,
        opt_state=follow_params(state.opt_state, state.params, params, replicated(mesh)),
    )


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
    """One jitted step with donated state; in/out shardings are those of ``abstract_state``.

    batch: ``{"image": f32 [B,H,W,3], "text": i32 [B,L]}`` sharded on the batch axes.
    Returns the new state and scalar metrics ``train/{loss,lr,t,b,grad_norm}``.
    ``optim.microbatches > 1``: GradCache accumulation (``gradcache.py``), the gradient of
    the whole-batch loss computed with the activation memory of one micro-batch.
    """
    microbatches = config.optim.microbatches
    rows_per_shard = config.batch_size // batch_size_per_step(mesh)
    if rows_per_shard % microbatches:
        raise ValueError(
            f"config.optim.microbatches: {microbatches} does not divide the {rows_per_shard} "
            f"rows per batch shard (batch_size {config.batch_size}, mesh {dict(mesh.shape)})"
        )

    freeze = config.optim.freeze
    partition_frozen(abstract_state.params, freeze)  # fail now if it matches none or all

    def step_fn(state: TrainState, batch):
        # Only the trainable params are differentiated: no backward for frozen towers.
        trainable, frozen = partition_frozen(state.params, freeze)

        def embed_fn(params, batch):
            zimg, ztxt, _ = model.apply(
                {"params": merge_params(params, frozen)}, image=batch["image"], text=batch["text"]
            )
            return {"zimg": zimg, "ztxt": ztxt}

        def loss_fn(params, emb):
            _, _, out = model.apply({"params": merge_params(params, frozen)})  # t and b only
            loss = contrastive_loss(config.loss, emb["zimg"], emb["ztxt"], out["t"], out["b"], mesh)
            return loss, out

        (loss, out), grads = gradcache.value_and_grad(
            embed_fn, loss_fn, trainable, batch, microbatches, batch_sharding(mesh)
        )
        zeros = jax.tree.map(jnp.zeros_like, frozen)  # unused by tx (set_to_zero)
        updates, opt_state = tx.update(merge_params(grads, zeros), state.opt_state, state.params)
        updates, _ = partition_frozen(updates, freeze)
        params = merge_params(optax.apply_updates(trainable, updates), frozen)
        metrics = {
            "train/loss": loss,
            "train/lr": schedule(state.step),
            "train/t": out["t"],
            "train/b": out["b"],
            "train/grad_norm": optax.tree.norm(grads),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
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
