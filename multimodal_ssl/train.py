"""The training loop: build everything from the config, resume, step, eval, checkpoint.

``train(config, workdir)`` is what ``main.py`` runs; tests call it directly with a
device subset (``devices=jax.devices()[:1]``) to compare 1- and N-device runs.

Faults it handles: SIGTERM / SIGINT finish the step, checkpoint and return
(``preemption.py``); a non-finite loss, gradient or param is caught inside the step
(``train.nan_policy``) and reported here as :class:`TrainingDiverged` before any checkpoint
could hold it; metrics of steps redone after a resume replace the lost ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import Checkpointer, abstract_like
from multimodal_ssl.metrics import MetricWriter, Progress
from multimodal_ssl.observe import LossSpikes, Profiler, StepClock, compile_step
from multimodal_ssl.preemption import StopRequest
from multimodal_ssl.sharding import to_global
from multimodal_ssl.train_state import NONFINITE, TrainState


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the params became non-finite (``train.nan_policy``)."""


def check_health(state: TrainState, config: ml_collections.ConfigDict, last_saved: int) -> None:
    """Raises :class:`TrainingDiverged` naming the step and what went non-finite when the
    policy says stop (``stop``: any such step; ``skip``: ``max_consecutive_skips`` in a
    row). Reads four scalars from the device: call it at the steps that sync anyway."""
    health = {k: int(v) for k, v in jax.device_get(state.health).items()}
    policy = config.train.nan_policy
    streak_limit = config.train.max_consecutive_skips
    if health["first_bad"] < 0 or (policy == "skip" and health["streak"] < streak_limit):
        return
    what = [name for name, bit in NONFINITE.items() if health["what"] & bit]
    if policy == "stop":
        reason = f"{'/'.join(what)} became non-finite at step {health['first_bad']}"
    else:
        reason = (
            f"{health['streak']} steps in a row had non-finite values (first at step "
            f"{health['first_bad']}: {'/'.join(what)})"
        )
    saved = (
        f"the latest checkpoint (step {last_saved}) holds finite params"
        if last_saved
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"training diverged: {reason}; {saved}. Lower config.optim.lr, set "
        f"config.optim.grad_clip, or use config.train.nan_policy=skip"
    )


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
    checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep)
    start_step = 0
    try:
        restored = checkpointer.restore(abstract_like(state), data_iter)
    except BaseException:
        checkpointer.close()
        data_iter.close()
        raise
    if restored is not None:
        state, start_step = restored
    train_step = exp.train_step(state)

    evaluators = exp.evaluators()
    embedder = exp.embedder()
    writer = MetricWriter(workdir, resume_step=start_step)
    progress = Progress(config.total_steps, start_step)
    profiler = Profiler(config.profile, workdir)
    clock = StepClock()
    spikes = LossSpikes(config.train.spike_factor, config.train.spike_window)
    last: dict[str, float] = {}
    last_saved, saved_at = start_step, time.monotonic()
    closers = (profiler.close, progress.close, checkpointer.close, data_iter.close, writer.close)
    try:
        with StopRequest() as stop:
            for step in range(start_step + 1, config.total_steps + 1):
                batch = to_global(_next_batch(data_iter, exp), mesh)
                profiler.before(step)
                if step == start_step + 1:  # compile ahead (timed, memory), excluded from ex/s
                    train_step, startup = compile_step(train_step, state, batch)
                    state, metrics = train_step(state, batch)
                    jax.block_until_ready(metrics)
                    clock.reset()
                else:
                    state, metrics = train_step(state, batch)
                    clock.tick()
                profiler.after(step, metrics)
                logging_step = _should_run(step, config.log_every_steps, config.total_steps)
                if logging_step:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    last.update(clock.metrics(config.batch_size), **startup)
                    last.update(spikes.check(step, last["train/loss"]))
                    last["data/skipped"] = float(data_iter.skipped_all_processes())
                    startup = {}  # logged once
                    clock.reset()
                    writer.write(step, last)
                    progress.update(
                        step,
                        {
                            "loss": last["train/loss"],
                            "ex/s": last.get("train/examples_per_sec", np.nan),
                        },
                    )
                preempted = stop.should_stop(step, metrics_step=logging_step)
                saving = (
                    _should_run(step, config.checkpoint.every_steps, config.total_steps)
                    or preempted
                    or (logging_step and _minutes_due(config, saved_at))
                )
                if saving or logging_step:  # steps that sync anyway; once per step
                    check_health(state, config, last_saved)
                if saving:
                    checkpointer.save(step, state, data_iter)
                    last_saved, saved_at = step, time.monotonic()
                if preempted:
                    checkpointer.wait()
                    logging.warning(
                        "Stopped by %s after step %d; its checkpoint is written. Run the same "
                        "command to resume.",
                        stop.signal_name,
                        step,
                    )
                    break
                results = _run_evals(step, state, config, evaluators, embedder)
                if results:
                    writer.write(step, results)
                    last.update(results)
    except BaseException:
        _close(closers, quietly=True)  # the error that stopped the run is the one to report
        raise
    _close(closers, quietly=False)
    return last


def _close(closers: Sequence[Callable[[], None]], *, quietly: bool) -> None:
    """Calls every closer; ``quietly``: their errors (e.g. a full disk refusing the last
    flush, again) are logged instead of raised."""
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001 - logged; the run's own error is raised
            if not quietly:
                raise
            logging.warning("While stopping: %s failed: %s", close.__qualname__, e)


def _run_evals(step, state, config, evaluators, embedder) -> dict[str, float]:
    """The evaluators due at ``step`` on the current params -> their metrics."""
    due = [
        e
        for n, e in evaluators.items()
        if _should_run(step, config.evals[n].every_steps, config.total_steps)
    ]
    if not due:
        return {}
    embedder.params = state.params
    results = {}
    for evaluator in due:
        results.update(evaluator.run(embedder.embed_fns()))
    logging.info("step %d evals: %s", step, results)
    return results


def _minutes_due(config: ml_collections.ConfigDict, saved_at: float) -> bool:
    """``checkpoint.every_minutes`` passed since the last save, by process 0's clock (all
    processes get its answer: they are at a metrics step, which syncs anyway)."""
    minutes = config.checkpoint.every_minutes
    if minutes is None:
        return False
    due = (time.monotonic() - saved_at) >= 60 * minutes
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def _next_batch(data_iter, exp: Experiment) -> dict[str, np.ndarray]:
    """The model inputs of the next batch (``exp.batch_keys``)."""
    batch = next(data_iter)
    return {k: batch[k] for k in exp.batch_keys}
