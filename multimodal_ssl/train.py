"""The training loop: build everything from the config, resume, step, eval, checkpoint.

``train(config, workdir)`` is what ``main.py`` runs; tests call it directly with a
device subset (``devices=jax.devices()[:1]``) to compare 1- and N-device runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from multimodal_ssl import config as config_lib
from multimodal_ssl import pretrained
from multimodal_ssl.checkpointing import Checkpointer, abstract_like
from multimodal_ssl.data.pipeline import train_loader_from_config
from multimodal_ssl.data.sources import DataOptions
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.evals import get_evaluator
from multimodal_ssl.metrics import MetricWriter, Progress
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.sharding import check_global_batch, make_mesh, to_global
from multimodal_ssl.train_state import Embedder, build_model, init_state, make_train_step

TRAIN_KEYS = ("image", "text")


def _should_run(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def build_evaluators(config: ml_collections.ConfigDict, tokenizer) -> dict:
    return {
        name: get_evaluator(cfg.type)(
            name,
            cfg,
            image_size=config.data.image_size,
            seed=config.seed,
            tokenizer=tokenizer,
            source_kwargs=DataOptions.from_config(config.data),
        )
        for name, cfg in config.evals.items()
    }


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, float]:
    """Trains (or resumes) to ``config.total_steps``; returns the last logged metrics."""
    config_lib.validate(config)
    mesh = make_mesh(config.mesh, devices)
    local_batch = check_global_batch(config.batch_size, mesh)
    logging.info("Mesh %s, global batch %d", dict(mesh.shape), config.batch_size)

    tokenizer = get_tokenizer(config.data.tokenizer, config.data.max_text_len)
    data_iter = iter(
        train_loader_from_config(
            config,
            batch_size=local_batch,
            tokenizer=tokenizer,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        )
    )

    config, imported = pretrained.init_from_config(config, tokenizer.vocab_size)
    model = build_model(config, tokenizer.vocab_size)
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    state = init_state(model, tx, config, mesh, imported)
    checkpointer = Checkpointer(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    start_step = 0
    restored = checkpointer.restore(abstract_like(state), data_iter)
    if restored is not None:
        state, start_step = restored
    train_step = make_train_step(model, tx, schedule, config, mesh, abstract_like(state))

    evaluators = build_evaluators(config, tokenizer)
    embedder = Embedder(model, mesh)
    writer = MetricWriter(workdir)
    progress = Progress(config.total_steps, start_step)
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = to_global(_next_batch(data_iter), mesh)
            state, metrics = train_step(state, batch)
            window_steps += 1
            if step == start_step + 1:  # exclude compilation from examples/s
                jax.block_until_ready(metrics)
                window_start, window_steps = time.perf_counter(), 0
            if _should_run(step, config.log_every_steps, config.total_steps):
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - window_start
                if window_steps:
                    last["train/examples_per_sec"] = window_steps * config.batch_size / elapsed
                last["data/skipped"] = float(data_iter.skipped_all_processes())
                window_start, window_steps = time.perf_counter(), 0
                writer.write(step, last)
                progress.update(step, {"loss": last["train/loss"],
                                       "ex/s": last.get("train/examples_per_sec", np.nan)})
            if _should_run(step, config.checkpoint.every_steps, config.total_steps):
                checkpointer.save(step, state, data_iter)
            due = {n: e for n, e in evaluators.items()
                   if _should_run(step, config.evals[n].every_steps, config.total_steps)}
            if due:
                embedder.params = state.params
                results = {}
                for evaluator in due.values():
                    results.update(evaluator.run(embedder.embed_images, embedder.embed_texts))
                writer.write(step, results)
                logging.info("step %d evals: %s", step, results)
                last.update(results)
    finally:
        progress.close()
        checkpointer.close()
        data_iter.close()
        writer.close()
    return last


def _next_batch(data_iter) -> dict[str, np.ndarray]:
    batch = next(data_iter)
    return {k: batch[k] for k in TRAIN_KEYS}
