"""Metric writers: ``<workdir>/metrics.jsonl``, TensorBoard events, console progress.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per line with a
``step`` key; on resume from step N the lines of later steps (written after the
checkpoint, before a kill) are dropped first, so the redone steps replace them and every
step appears once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
import tqdm
from absl import logging


def _to_python(value) -> float | int:
    value = np.asarray(value)
    return value.item()


class MetricWriter:
    """Writes scalar dicts to JSONL and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int = 0):
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self._enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        _drop_lines_after(path, resume_step)
        self._jsonl = open(path, "a")  # noqa: SIM115
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, object]) -> None:
        if not self._enabled:
            return
        values = {k: _to_python(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, global_step=int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _drop_lines_after(path: str, step: int) -> None:
    """Rewrites ``path`` (if any) without the lines of steps after ``step`` (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) == len(lines):
        return
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    logging.info("metrics.jsonl: dropped %d lines after step %d", len(lines) - len(kept), step)


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
    """``{step: {name: value}}`` from ``metrics.jsonl``; later lines win per key."""
    out: dict[int, dict[str, float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            out.setdefault(record.pop("step"), {}).update(record)
    return out


def final_metrics(workdir: str) -> dict[str, float]:
    """The last logged value of every metric of the run in ``workdir`` (from the highest
    step that logged it)."""
    by_step = read_metrics(workdir)
    out: dict[str, float] = {}
    for step in sorted(by_step):
        out.update(by_step[step])
    return out


class Progress:
    """Console progress bar with loss, examples/s and ETA (process 0 only)."""

    def __init__(self, total_steps: int, initial_step: int):
        self._bar = None
        if jax.process_index() == 0:
            self._bar = tqdm.tqdm(
                total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                mininterval=2.0,
            )
        self._last_step = initial_step

    def update(self, step: int, postfix: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._last_step)
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        logging.log_every_n_seconds(
            logging.INFO, "step %d: %s", 30, step,
            ", ".join(f"{k}={v:.4g}" for k, v in postfix.items()),
        )
        self._last_step = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
