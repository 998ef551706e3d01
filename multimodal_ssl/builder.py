"""The one place that turns a config into the pieces of a run: mesh, tokenizer, per-
modality preprocessing, the multi-tower model, the objective, the optimizer, the train
state, the train step, the evaluators and the embedder. ``train``, ``evaluate``,
``embed`` and the tests build through :class:`Experiment` (the step benchmarks use
its parts directly).

    exp = Experiment(config)                      # validates, builds the model
    loader = exp.train_loader()                   # this process's batches
    state = exp.init_state()                      # sharded params + optimizer state
    step = exp.train_step(state)                  # jitted, donates the state
    evaluators = exp.evaluators()                 # {name: Evaluator}
    embedder = exp.embedder()                     # embed(modality, inputs)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from multimodal_ssl import config as config_lib
from multimodal_ssl import distill, locca, pretrained
from multimodal_ssl.checkpointing import abstract_like
from multimodal_ssl.data.modalities import Processor, make_processors
from multimodal_ssl.data.pipeline import TrainLoader, train_loader_from_config
from multimodal_ssl.data.sources import DataOptions
from multimodal_ssl.data.tokenizers import Tokenizer, get_tokenizer
from multimodal_ssl.embedder import Embedder
from multimodal_ssl.evals import Evaluator, get_evaluator
from multimodal_ssl.losses.objectives import Objective, make_objective
from multimodal_ssl.models.towers import MultiTower, build_model
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.sharding import check_global_batch, make_mesh
from multimodal_ssl.train_state import TrainState, init_state, make_train_step


def build_evaluator(
    config: ml_collections.ConfigDict, name: str, processors: dict[str, Processor]
) -> Evaluator:
    """The evaluator ``config.evals[name]`` with the eval ``processors`` (opens its data)."""
    cfg = config.evals[name]
    return get_evaluator(cfg.type)(
        name,
        cfg,
        processors=processors,
        image_size=config.data.image_size,
        seed=config.seed,
        source_kwargs=DataOptions.from_config(config.data),
    )


def build_evaluators(
    config: ml_collections.ConfigDict, processors: dict[str, Processor]
) -> dict[str, Evaluator]:
    """``{name: Evaluator}`` of ``config.evals`` with the eval ``processors``."""
    return {name: build_evaluator(config, name, processors) for name in config.evals}


def input_spec(processor: Processor) -> Any:
    """One example's model input of ``processor`` as ``ShapeDtypeStruct [1, ...]`` (a dict
    of them where its ``example_shape`` is a dict: NaFlex)."""
    shape = processor.example_shape()
    if isinstance(shape, dict):
        return {k: jax.ShapeDtypeStruct((1, *s), d) for k, (s, d) in shape.items()}
    return jax.ShapeDtypeStruct((1, *shape[0]), shape[1])


class Experiment:
    """Everything ``config`` describes, built on the mesh of ``config.mesh`` over
    ``devices`` (default: all). Validates ``config`` first; a ``model.init_from`` run
    takes the imported towers' architecture (``self.config`` is the resolved config).

    Attributes: ``config``, ``mesh``, ``tokenizer``, ``model`` (:class:`MultiTower`),
    ``imported`` (pretrained subtrees), ``eval_processors`` (``{modality: Processor}``),
    ``input_specs`` (``{modality: ShapeDtypeStruct [1, ...]}``, a dict of them for a
    NaFlex image), ``distill``
    (:class:`~multimodal_ssl.distill.SelfDistill` or None: ``config.distill`` off),
    ``locca`` (:class:`~multimodal_ssl.locca.LocCa` or None: ``config.decoder`` off).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        devices: Sequence[jax.Device] | None = None,
        *,
        tokenizer: Tokenizer | None = None,
    ):
        config_lib.validate(config)
        self.mesh: Mesh = make_mesh(config.mesh, devices)
        self.tokenizer = tokenizer or get_tokenizer(config.data.tokenizer, config.data.max_text_len)
        self.config, self.imported = pretrained.init_from_config(config, self.tokenizer.vocab_size)
        self.model: MultiTower = build_model(self.config, self.tokenizer.vocab_size)
        self.eval_processors = make_processors(self.config, train=False, tokenizer=self.tokenizer)
        self.input_specs = {m: input_spec(p) for m, p in self.eval_processors.items()}
        self.masked: tuple[str, ...] = ()
        self.distill: distill.SelfDistill | None = None
        if distill.enabled(self.config):
            self.distill = distill.SelfDistill(
                self.config.distill, self.model, self.config.total_steps
            )
        self.locca: locca.LocCa | None = None
        if locca.enabled(self.config):
            self.locca = locca.LocCa(self.config.decoder, self.model, self.tokenizer.vocab_size)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.model.towers)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The training inputs: every tower's modality and the views of ``data.views``."""
        return (*self.model.towers, *(self.model.views or {}))

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The training batch entries the step reads: every input (towers and views), the
        masks of the modalities some sources lack, and the local crops of
        self-distillation."""
        keys = (*self.inputs, *(f"mask/{m}" for m in self.masked))
        if self.distill is not None and self.distill.local:
            keys = (*keys, self.distill.local_key)
        if self.locca is not None:
            keys = (*keys, *self.locca.batch_keys)
        return keys

    def train_loader(self) -> TrainLoader:
        """This process's training loader (its share of the global batch); remembers
        which modalities some sources lack (masked in the objective)."""
        local_batch = check_global_batch(self.config.batch_size, self.mesh)
        loader = train_loader_from_config(
            self.config,
            batch_size=local_batch,
            tokenizer=self.tokenizer,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        )
        self.masked = [m for m in loader.masked if m in self.inputs]  # not locca's rows
        return loader

    @functools.cached_property
    def objective(self) -> Objective:
        """The objective of ``config.loss`` (after :meth:`train_loader`, it knows which
        modalities are masked)."""
        return make_objective(
            self.config.loss, self.inputs, self.masked, embed_dim=self.config.model.embed_dim
        )

    @functools.cached_property
    def optimizer(self) -> tuple[Any, Any]:
        """``(tx, schedule)`` of ``config.optim``."""
        return make_optimizer(self.config.optim, self.config.total_steps)

    def init_state(self) -> TrainState:
        """A fresh train state (imported subtrees in place), sharded on the mesh."""
        tx, _ = self.optimizer
        return init_state(
            self.model,
            self.objective,
            tx,
            self.config,
            self.mesh,
            self.input_specs,
            self.imported,
            self.distill,
            self.locca,
        )

    def train_step(self, state: TrainState):
        """The jitted train step for states shaped and sharded like ``state``."""
        tx, schedule = self.optimizer
        return make_train_step(
            self.model,
            self.objective,
            tx,
            schedule,
            self.config,
            self.mesh,
            abstract_like(state),
            self.masked,
            self.distill,
            self.locca,
        )

    def evaluators(self) -> dict[str, Evaluator]:
        """``{name: Evaluator}`` of ``config.evals``."""
        return build_evaluators(self.config, self.eval_processors)

    def embedder(self, params: Any = None) -> Embedder:
        """A jitted, batch-sharded embedder of every tower (``params`` set if given)."""
        embedder = Embedder(self.model, self.mesh)
        embedder.params = params
        if self.locca is not None:  # greedy decoding, for the locca evals
            embedder.extra_fns["locca"] = locca.Captioner(self.locca, embedder, self.tokenizer)
        return embedder
