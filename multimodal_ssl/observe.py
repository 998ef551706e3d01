"""What a researcher wants to see of a run besides the loss: the train step's compile
time and per-device memory (logged once), examples/s, the mean step time per metrics
window and its percentiles, loss spikes against a running median, and a
``jax.profiler`` trace of chosen steps (``config.profile``) for TensorBoard's profile
plugin."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

MIB = 2**20


def compile_step(step_fn: Any, state: Any, batch: Any) -> tuple[Callable, dict[str, float]]:
    """Compiles the jitted ``step_fn`` for ``(state, batch)`` ahead of time: -> (the
    compiled step, ``{"compile/seconds", "memory/{argument,output,temp}_mib"}``: XLA's
    per-device sizes from ``memory_analysis()``), logged once."""
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    info = {"compile/seconds": time.perf_counter() - start}
    memory = compiled.memory_analysis()
    if memory is not None:
        for name in ("argument", "output", "temp"):
            info[f"memory/{name}_mib"] = getattr(memory, f"{name}_size_in_bytes") / MIB
    logging.info(
        "Train step compiled in %.1f s; per device: %s",
        info["compile/seconds"],
        ", ".join(f"{k.split('/')[1]} {v:.1f}" for k, v in info.items() if k != "compile/seconds")
        or "no memory analysis on this backend",
    )
    return compiled, info


class StepClock:
    """Examples/s over a metrics window: steps counted since the last reset, divided by
    the wall time up to the window's end, read right after the metrics fetch (which waits
    for the device), so asynchronous dispatch running ahead is not counted as speed.

    Percentiles (``train/step_time_ms_p50`` / ``_p90``) are over the mean step times of the
    last ``history`` windows: per-step times when ``log_every_steps`` is 1, else per
    window (timing single steps would need a host sync every step)."""

    def __init__(self, history: int = 100):
        self._windows: collections.deque[float] = collections.deque(maxlen=history)
        self.reset()

    def reset(self) -> None:
        self._steps = 0
        self._start = time.perf_counter()

    def tick(self) -> None:
        self._steps += 1

    def metrics(self, batch_size: int) -> dict[str, float]:
        """``train/examples_per_sec`` and ``train/step_time_ms`` (the window's mean) since
        the last reset; call after the metrics were fetched."""
        if not self._steps:
            return {}
        elapsed = time.perf_counter() - self._start
        step_ms = elapsed / self._steps * 1e3
        self._windows.append(step_ms)
        p50, p90 = np.percentile(self._windows, [50, 90])
        return {
            "train/examples_per_sec": self._steps * batch_size / elapsed,
            "train/step_time_ms": step_ms,
            "train/step_time_ms_p50": float(p50),
            "train/step_time_ms_p90": float(p90),
        }


class LossSpikes:
    """Warns when a logged loss exceeds ``factor`` x the median of the previous
    ``window`` logged losses (after ``min_history`` of them); counts the spikes in
    ``train/loss_spikes``. Host-side, on values fetched for logging anyway."""

    def __init__(self, factor: float, window: int, min_history: int = 10):
        self.factor, self.min_history = factor, min_history
        self._history: collections.deque[float] = collections.deque(maxlen=window)
        self.count = 0

    def check(self, step: int, loss: float) -> dict[str, float]:
        """Records ``loss`` of ``step`` -> ``{"train/loss_spikes": count so far}``."""
        if not self.factor:  # 0: off
            return {}
        if len(self._history) >= self.min_history and np.isfinite(loss):
            median = float(np.median(self._history))
            if median > 0 and loss > self.factor * median:
                self.count += 1
                logging.warning(
                    "Loss spike at step %d: %.4g is %.1fx the median %.4g of the last %d "
                    "logged losses",
                    step,
                    loss,
                    loss / median,
                    median,
                    len(self._history),
                )
        if np.isfinite(loss):
            self._history.append(loss)
        return {"train/loss_spikes": float(self.count)}


class Profiler:
    """Traces steps ``[start_step, start_step + num_steps)`` (``config.profile``) into
    ``<workdir>/profile`` (process 0; TensorBoard's profile plugin reads it)."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str):
        self.start = cfg.start_step
        self.stop = None if self.start is None else self.start + cfg.num_steps - 1
        self.dir = os.path.join(workdir, "profile")
        self.active = False

    def before(self, step: int) -> None:
        if step == self.start and jax.process_index() == 0:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        if self.active and step == self.stop:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False
            logging.info("Profile of steps %d-%d written to %s", self.start, step, self.dir)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
