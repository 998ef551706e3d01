"""Two CPU processes joined by ``jax.distributed.initialize`` on localhost train like one
process fed the same global batches, and checkpoint cooperatively."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from multimodal_ssl import distributed
from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import abstract_like
from multimodal_ssl.data.pipeline import train_loader_from_config
from multimodal_ssl.metrics import read_metrics
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import to_global

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, STEPS = 2, 2

WORKER = """
import sys
from absl import logging
logging.set_verbosity("info")
from multimodal_ssl import distributed
distributed.initialize(sys.argv[1], {n}, int(sys.argv[2]))
from multimodal_ssl.train import train
from tests.test_multihost import config
train(config(**{kwargs}), sys.argv[3])
"""


def config(steps=STEPS):
    """Tiny recipe; FSDP over the 2 processes' devices, so params are split across hosts."""
    c = load_recipe(os.path.join(ROOT, "configs", "siglip.py"), "tiny")
    c.total_steps = steps
    c.checkpoint.every_steps = steps
    c.mesh.update({"data": 1, "fsdp": PROCESSES, "model": 1})
    c.sharding.fsdp_min_size = 0
    c.model.image.pool, c.model.text.pool = "gap", "mean"
    c.evals = {}
    return c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(workdir, logdir, **config_kwargs):
    """The 2-process run of WORKER, in the background; its output goes to logdir."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )
    procs = []
    for i in range(PROCESSES):
        with open(logdir / f"process_{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER.format(n=PROCESSES, kwargs=config_kwargs),
                        address,
                        str(i),
                        str(workdir),
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _wait(procs, logdir):
    try:
        for p in procs:
            p.wait(timeout=400)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, (logdir / f"process_{i}.log").read_text()[-4000:]


def _reference(c):
    """One process, the same mesh shape on 2 local devices, fed the concatenation of the
    two processes' data shards: the global batches the 2-process run sees."""
    exp = Experiment(c, jax.devices()[:PROCESSES])
    local = c.batch_size // PROCESSES
    shards = [
        iter(
            train_loader_from_config(
                c, batch_size=local, tokenizer=exp.tokenizer, shard_index=i, shard_count=PROCESSES
            )
        )
        for i in range(PROCESSES)
    ]
    state = exp.init_state()
    step = exp.train_step(state)
    losses = []
    for _ in range(STEPS):
        parts = [next(s) for s in shards]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in exp.modalities}
        state, metrics = step(state, to_global(batch, exp.mesh))
        losses.append(float(metrics["train/loss"]))
    return np.array(losses), state


def test_two_processes_train_and_checkpoint_like_one(tmp_path):
    workdir = tmp_path / "run"
    procs = _start_processes(workdir, tmp_path)
    try:  # the reference runs while the two processes do
        ref_losses, ref_state = _reference(config())
    finally:
        _wait(procs, tmp_path)

    with open(workdir / "metrics.jsonl") as f:
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in f]
    assert steps == list(range(1, STEPS + 1))  # written once (by process 0 only)
    metrics = read_metrics(str(workdir))
    losses = np.array([metrics[s]["train/loss"] for s in range(1, STEPS + 1)])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)

    ckpt = workdir / "checkpoints" / str(STEPS)
    data_states = sorted(os.listdir(ckpt / "data"))
    assert [f for f in data_states if f.endswith(".json")] == [
        f"process_{i}-of-{PROCESSES}.json" for i in range(PROCESSES)
    ]
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data")) as manager:
        restored = manager.restore(
            STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(ref_state)))
        )["state"]
    assert int(restored.step) == STEPS
    for got, want in zip(
        jax.tree.leaves(restored.params), jax.tree.leaves(ref_state.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_sigterm_stops_both_processes_at_the_same_step_and_they_resume(tmp_path):
    """SIGTERM to one process: JAX's preemption sync point makes both stop after the same
    step; they write one checkpoint of it together and exit 0. Restarted, both resume from
    that step, and metrics.jsonl holds each step once."""
    workdir = tmp_path / "run"
    procs = _start_processes(workdir, tmp_path, steps=100000)
    try:
        deadline = time.time() + 300
        while len(read_metrics(str(workdir)) if (workdir / "metrics.jsonl").exists() else []) < 3:
            assert all(p.poll() is None for p in procs), (tmp_path / "process_0.log").read_text()
            assert time.time() < deadline, "no training steps within 300 s"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)
    finally:
        _wait(procs, tmp_path)
    saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 100000
    for i in range(PROCESSES):
        log = (tmp_path / f"process_{i}.log").read_text()
        assert f"after step {saved[0]}; its checkpoint is written" in log, log[-2000:]

    restart = tmp_path / "restart"
    restart.mkdir()
    _wait(_start_processes(workdir, restart, steps=saved[0] + 2), restart)
    for i in range(PROCESSES):
        log = (restart / f"process_{i}.log").read_text()
        assert f"Restored checkpoint of step {saved[0]}" in log, log[-2000:]
    with open(workdir / "metrics.jsonl") as f:
        logged = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert logged == list(range(1, saved[0] + 3)), logged


def test_initialize_needs_all_three_or_auto(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False  # single process: nothing to join
    with pytest.raises(ValueError, match=r"\['num_processes', 'process_id'\] missing"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize("127.0.0.1:1234", process_id=0)
