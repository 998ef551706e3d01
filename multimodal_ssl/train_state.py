"""Train state, the model of a config, its initialisation and the jitted train step.

Everything here is a pure function of the config, the model, the objective and the
mesh; ``builder.py`` wires them together and the loop in ``train.py`` only feeds
batches and writes results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from multimodal_ssl import gradcache
from multimodal_ssl.distill import PARAMS as DISTILL_PARAMS
from multimodal_ssl.distill import SelfDistill
from multimodal_ssl.locca import PARAMS as DECODER_PARAMS
from multimodal_ssl.locca import TOKENS, LocCa
from multimodal_ssl.losses.objectives import Objective
from multimodal_ssl.models.activation_sharding import batch_sharded_activations
from multimodal_ssl.models.towers import MultiTower
from multimodal_ssl.optim import merge_params, partition_frozen
from multimodal_ssl.sharding import (
    batch_sharding,
    batch_size_per_step,
    follow_params,
    param_shardings,
    replicated,
)

_MICRO = "_microbatch"  # batch leaf added in the step: each row's micro-batch index
_LOSS_STREAM = 0x7FFFFFFF  # folded into the step key for the objective (micro-batches use 0..M-1)
_DECODER_STREAM = 0x7FFFFFFE  # ... and for the decoder's dropout


# Bits of ``TrainState.health["what"]``: which values of a step were non-finite.
NONFINITE = {"loss": 1, "gradients": 2, "params": 4}


@flax.struct.dataclass
class TrainState:
    """``step``: i32 scalar; ``params``: f32 pytree (towers + objective scalars);
    ``opt_state``: optax state; ``rng``: u32 [2], the run's key (each step folds in its
    step number, so a resumed run draws the same dropout masks); ``health``: i32 scalars
    ``skipped`` (steps whose update was dropped), ``streak`` (of them in a row),
    ``first_bad`` (the first such step, -1: none) and ``what`` (its :data:`NONFINITE`
    bits)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    health: dict[str, jax.Array]


@flax.struct.dataclass
class DistillTrainState(TrainState):
    """The train state of a run with ``config.distill`` on: plus ``teacher``, the EMA
    teacher of self-distillation (``distill.SelfDistill``: tower and head params, centers).
    A subclass, so that runs without it keep the checkpoint layout they always had."""

    teacher: Any


def fresh_health() -> dict[str, jax.Array]:
    """The health counters of a run with no non-finite step."""
    zero = jnp.zeros((), jnp.int32)
    return {"skipped": zero, "streak": zero, "first_bad": zero - 1, "what": zero}


def _state_init_fn(
    model: MultiTower,
    objective: Objective,
    tx: optax.GradientTransformation,
    inputs: Mapping[str, jax.ShapeDtypeStruct],
    distill: SelfDistill | None = None,
    decoder: LocCa | None = None,
) -> Callable[[jax.Array, dict[str, Any]], TrainState]:
    """``init_fn(rng, imported) -> TrainState``: the towers (initialised on zeros shaped
    like ``inputs``), the objective's scalars, ``imported`` subtrees over them; with
    ``distill``, its head (``params["distill"]``) and the teacher (a copy of the
    student's tower) in a :class:`DistillTrainState`; with ``decoder``, LocCa's decoder
    (``params["decoder"]``)."""
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(inputs))

    def init_fn(rng, imported):
        params = {**model.init(rng, dummy)["params"], **objective.init_params(), **imported}
        extra = {}
        if decoder is not None:
            params[DECODER_PARAMS] = decoder.init_params(jax.random.fold_in(rng, 3))
        if distill is not None:
            head_rng = jax.random.fold_in(rng, 2)
            params[DISTILL_PARAMS] = distill.init_params(head_rng, model.embed_dim)
            extra["teacher"] = distill.init_teacher(params)
        return (DistillTrainState if extra else TrainState)(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.fold_in(rng, 1)),
            health=fresh_health(),
            **extra,
        )

    return init_fn


def init_state(
    model: MultiTower,
    objective: Objective,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    inputs: Mapping[str, jax.ShapeDtypeStruct],
    imported: dict[str, Any] | None = None,
    distill: SelfDistill | None = None,
    decoder: LocCa | None = None,
) -> TrainState:
    """Initialises the towers from ``config.seed`` (with ``inputs``: one example's
    ``[1, ...]`` shape per modality) and the objective's scalars, directly into their
    shardings. ``imported``: top-level subtrees (``{"img": ...}``, from
    ``pretrained.init_from_config``) that replace the random ones. ``distill``: adds its
    head (``params["distill"]``) and the teacher (a copy of the student's tower);
    ``decoder``: LocCa's decoder (``params["decoder"]``)."""
    imported = imported or {}
    init_fn = _state_init_fn(model, objective, tx, inputs, distill, decoder)
    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_fn, rng, imported)
    shardings = state_shardings(abstract, mesh, config.sharding)
    return jax.jit(init_fn, out_shardings=shardings)(rng, imported)


def abstract_state(
    model: MultiTower,
    objective: Objective,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    inputs: Mapping[str, jax.ShapeDtypeStruct],
    distill: SelfDistill | None = None,
    decoder: LocCa | None = None,
) -> TrainState:
    """The state :func:`init_state` would make, as ``jax.ShapeDtypeStruct`` leaves with
    their shardings; nothing is allocated (for compile-only memory plans:
    ``make_train_step(..., abstract_state(...)).lower(state, batch).compile()``)."""
    abstract = jax.eval_shape(
        _state_init_fn(model, objective, tx, inputs, distill, decoder),
        jax.random.key(config.seed),
        {},
    )
    shardings = state_shardings(abstract, mesh, config.sharding)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )


def state_shardings(state: TrainState, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
    """Sharding of every leaf of the train state: params by ``config.sharding`` rules
    (tensor parallel + FSDP, see ``sharding.param_shardings``), optimizer state following
    its params, the rest replicated."""
    params = param_shardings(state.params, mesh, cfg.rules, cfg.fsdp_min_size)
    extra = {}
    if isinstance(state, DistillTrainState):  # teacher params as the student's, the rest
        teacher = jax.tree.map(lambda _: replicated(mesh), state.teacher)  # replicated
        teacher["params"] = param_shardings(
            state.teacher["params"], mesh, cfg.rules, cfg.fsdp_min_size
        )
        extra["teacher"] = teacher
    return type(state)(
        step=replicated(mesh),
        params=params,
        opt_state=follow_params(state.opt_state, state.params, params, replicated(mesh)),
        rng=replicated(mesh),
        health=jax.tree.map(lambda _: replicated(mesh), state.health),
        **extra,
    )


def make_train_step(
    model: MultiTower,
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    abstract_state: TrainState,
    masked: Sequence[str] = (),
    distill: SelfDistill | None = None,
    decoder: LocCa | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """One jitted step with donated state; in/out shardings are those of ``abstract_state``.

    batch: ``{modality: [B, ...]}`` for every tower and view (``model.views``), plus
    ``mask/<m>`` (bool [B]) for the modalities in ``masked``, sharded on the batch axes.
    The objective gets unit rows, or the raw projections if its ``unit_rows`` is False.
    The forward pass runs with ``train=True`` and a "dropout" rng folded from the
    state's key, the step and the micro-batch. Returns the new state and scalar metrics
    ``train/{loss,lr,grad_norm}`` plus the objective's (``train/t``, ``train/loss/<a>_<b>``, ...).
    ``optim.microbatches > 1``: GradCache accumulation (``gradcache.py``), the gradient of
    the whole-batch loss computed with the activation memory of one micro-batch.
    ``distill``: adds the self-distillation terms (``distill.py``; their own full-batch
    backward, ``train/loss/local_global``, ``train/loss/masked``) and the teacher's EMA
    update; the batch then also holds ``<modality>_local`` for local crops.
    ``decoder``: adds LocCa's decoder loss (``locca.py``) on the patch tokens of the same
    forward pass (``train/loss/locca*``); the batch then also holds ``locca/*``.
    """
    microbatches = config.optim.microbatches
    rows_per_shard = config.batch_size // batch_size_per_step(mesh)
    if rows_per_shard % microbatches:
        raise ValueError(
            f"config.optim.microbatches: {microbatches} does not divide the {rows_per_shard} "
            f"rows per batch shard (batch_size {config.batch_size}, mesh {dict(mesh.shape)})"
        )
    modalities = (*model.towers, *(model.views or {}))  # towers' inputs and their views
    tokens_of = (decoder.modality,) if decoder is not None else ()
    nan_policy = config.train.nan_policy
    freeze = config.optim.freeze
    trainable_at_start, _ = partition_frozen(abstract_state.params, freeze)  # fails if bad
    if distill is not None and distill.tower_name not in trainable_at_start:
        raise ValueError(
            f"config.distill: the {distill.modality} tower is frozen (config.optim.freeze="
            f"{freeze!r}); self-distillation trains it, so unfreeze it or set "
            "config.distill.local_weight = masked_weight = 0"
        )

    def step_fn(state: TrainState, batch):
        # Only the trainable params are differentiated: no backward for frozen towers.
        trainable, frozen = partition_frozen(state.params, freeze)
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        inputs = {m: batch[m] for m in modalities}
        inputs[_MICRO] = jnp.arange(config.batch_size, dtype=jnp.int32) % microbatches
        masks = {m: batch[f"mask/{m}"] for m in masked}

        def embed_fn(params, inputs):
            rng = jax.random.fold_in(step_rng, inputs[_MICRO][0])
            x = {m: inputs[m] for m in modalities}
            variables = {"params": merge_params(params, frozen)}
            with batch_sharded_activations(batch_sharding(mesh)):
                return model.apply(
                    variables, x, train=True, normalize=objective.unit_rows,
                    rngs={"dropout": rng}, return_tokens=tokens_of,
                )

        def loss_fn(params, emb):
            # Objectives that sample (Symile's shuffled negatives) get their own stream.
            rng = jax.random.fold_in(step_rng, _LOSS_STREAM)
            params = merge_params(params, frozen)
            tokens = {k: v for k, v in emb.items() if k.startswith(TOKENS)}
            emb = {k: v for k, v in emb.items() if not k.startswith(TOKENS)}
            loss, aux = objective(emb, params, masks=masks, mesh=mesh, rng=rng)
            if decoder is not None:
                d_rng = jax.random.fold_in(step_rng, _DECODER_STREAM)
                tokens = tokens[TOKENS + decoder.modality]
                d_loss, d_metrics = decoder.loss(params, tokens, batch, d_rng)
                loss, aux = loss + d_loss, {**aux, **d_metrics}
            return loss, aux

        (loss, aux), grads = gradcache.value_and_grad(
            embed_fn, loss_fn, trainable, inputs, microbatches, batch_sharding(mesh)
        )
        if distill is not None:
            d_loss, d_metrics, d_grads, teacher = distill.term(
                trainable, frozen, state.teacher, batch, state.step, step_rng
            )
            loss = loss + d_loss
            aux = {**aux, **d_metrics}
            grads = jax.tree.map(jnp.add, grads, d_grads)
        zeros = jax.tree.map(jnp.zeros_like, frozen)  # unused by tx (set_to_zero)
        updates, opt_state = tx.update(merge_params(grads, zeros), state.opt_state, state.params)
        updates, _ = partition_frozen(updates, freeze)
        if distill is not None:
            updates = distill.gate_updates(updates, state.step)
        params = merge_params(optax.apply_updates(trainable, updates), frozen)
        grad_norm = optax.tree.norm(grads)
        ok, health = _check_finite(loss, grad_norm, params, state, nan_policy)
        # A non-finite step keeps the previous params and optimizer state.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(ok, new, old),
            (params, opt_state),
            (state.params, state.opt_state),
        )
        metrics = {
            "train/loss": loss,
            "train/lr": schedule(state.step),
            **aux,
            "train/grad_norm": grad_norm,
            "train/skipped_steps": health["skipped"],
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, health=health
        )
        if distill is not None:  # a non-finite step keeps the previous teacher too
            moved = distill.next_teacher(teacher, params, state.step)
            new_state = new_state.replace(
                teacher=jax.tree.map(lambda n, o: jnp.where(ok, n, o), moved, state.teacher)
            )
        return new_state, metrics

    shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )


def _check_finite(
    loss: jax.Array, grad_norm: jax.Array, params: Any, state: TrainState, policy: str
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(apply this step's update?, the new health counters). Inside the step: no host
    sync. ``stop``: after the first non-finite step no update is applied any more (the
    loop then stops naming it); ``skip``: only the non-finite steps are dropped."""
    param_norm = optax.tree.norm(params)
    what = (
        jnp.where(jnp.isfinite(loss), 0, NONFINITE["loss"])
        | jnp.where(jnp.isfinite(grad_norm), 0, NONFINITE["gradients"])
        | jnp.where(jnp.isfinite(param_norm), 0, NONFINITE["params"])
    ).astype(jnp.int32)
    bad = what != 0
    h = state.health
    first = h["first_bad"] < 0
    health = {
        "skipped": h["skipped"] + bad,
        "streak": jnp.where(bad, h["streak"] + 1, 0),
        "first_bad": jnp.where(bad & first, state.step + 1, h["first_bad"]),
        "what": jnp.where(bad & first, what, h["what"]),
    }
    ok = ~bad
    if policy == "stop":
        ok = ok & first
    return ok, health
