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

from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import Checkpointer, abstract_like
from multimodal_ssl.metrics import MetricWriter, Progress
from multimodal_ssl.sharding import to_global


def _should_run(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, float]:
    """Trains (or resumes) to ``config.total_steps``; returns the last logged metrics."""
    exp = Experiment(config, devices)
    config, mesh = exp.config, exp.mesh
    logging.info(
        "Mesh %s, global batch %d, towers %s", dict(mesh.shape), config.batch_size, exp.modalities
    )
    data_iter = iter(exp.train_loader())
    state = exp.init_state()
    checkpointer = Checkpointer(
        workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep
    )
    start_step = 0
    restored = checkpointer.restore(abstract_like(state), data_iter)
    if restored is not None:
        state, start_step = restored
    train_step = exp.train_step(state)

    evaluators = exp.evaluators()
    embedder = exp.embedder()
    writer = MetricWriter(workdir)
    progress = Progress(config.total_steps, start_step)
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = to_global(_next_batch(data_iter, exp), mesh)
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
                    results.update(evaluator.run(embedder.embed_fns()))
                writer.write(step, results)
                logging.info("step %d evals: %s", step, results)
                last.update(results)
    finally:
        progress.close()
        checkpointer.close()
        data_iter.close()
        writer.close()
    return last


def _next_batch(data_iter, exp: Experiment) -> dict[str, np.ndarray]:
    """The model inputs of the next batch: one array per tower, and the masks."""
    batch = next(data_iter)
    return {k: batch[k] for k in (*exp.modalities, *(f"mask/{m}" for m in exp.masked))}
