"""Processes signalled for real (SIGKILL at chosen steps and inside a save, SIGTERM) and a
disk that refuses a save: the same command resumes and ends bit for bit where an
uninterrupted run ends. The children share a JAX compilation cache, so each restart
skips compilation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from multimodal_ssl.checkpointing import verify
from multimodal_ssl.metrics import read_metrics
from tests.test_train import ROOT, losses

STEPS, EVERY = 40, 5
REGULARISED = {"model.image.dropout": 0.1, "model.text.dropout": 0.1,
               "model.image.token_drop": 0.25, "model.text.stochastic_depth": 0.2}
ARGS = [
    f"--config.total_steps={STEPS}",
    f"--config.checkpoint.every_steps={EVERY}",
    "--config.evals.zeroshot.every_steps=1000",
    "--config.evals.retrieval.every_steps=1000",
    *(f"--config.{k}={v}" for k, v in REGULARISED.items()),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compilation cache for every child of this module (same program each time)."""
    return tmp_path_factory.mktemp("jax_cache")


def _child(workdir, fault, cache, *args, recipe="siglip.py:tiny", base_args=ARGS):
    """``multimodal_ssl.main`` on the tiny ``recipe`` with ``fault`` injected
    (``tests/fault_child.py``); output through pipes (never files: see ``full@save``)."""
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    cmd = [sys.executable, "-m", "tests.fault_child", fault, "--",
           f"--config={ROOT}/configs/{recipe}", f"--workdir={workdir}", *base_args, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _saved(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


def _final_params(workdir, step=STEPS):
    state = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))
    return state["params"], state["opt_state"], state.get("teacher")


def _kill_schedule(seed: int) -> list[str]:
    """Five kills at increasing steps of a ``STEPS``-step run: four after a train step and
    one inside a checkpoint save."""
    rng = np.random.default_rng(seed)
    inside_save = int(rng.choice(range(2 * EVERY, STEPS, EVERY)))
    after = rng.choice([s for s in range(2, STEPS) if s % EVERY], 4, replace=False)
    kills = [(int(s), "step") for s in after] + [(inside_save, "save")]
    return [f"kill@{where}:{s}" for s, where in sorted(kills)]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_five_sigkills_one_inside_a_save_end_bitwise_like_no_kill(tmp_path, cache):
    reference = tmp_path / "reference"
    run = _child(reference, "none", cache)
    assert run.returncode == 0, run.stderr[-3000:]

    killed = tmp_path / "killed"
    for fault in _kill_schedule(seed=0):
        run = _child(killed, fault, cache)
        assert run.returncode == -9, (fault, run.returncode, run.stderr[-3000:])
        if fault.startswith("kill@save"):  # died with that step half-written
            step = int(fault.split(":")[1])
            assert step not in _saved(killed), _saved(killed)
            assert os.path.isdir(killed / "checkpoints" / f"{step}.orbax-checkpoint-tmp")
    last = _child(killed, "none", cache)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "Restored checkpoint of step" in last.stderr

    for got, want in zip(_final_params(killed), _final_params(reference), strict=True):
        for g, w in zip(_leaves(got), _leaves(want), strict=True):
            assert np.array_equal(g, w)
    np.testing.assert_array_equal(losses(killed, range(1, STEPS + 1)),
                                  losses(reference, range(1, STEPS + 1)))


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _logged_steps(workdir) -> list[int]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line)["step"] for line in f if "train/loss" in line]


def test_sigterm_checkpoints_the_current_step_and_the_command_resumes(tmp_path, cache):
    """The process finishes its step, saves it and exits 0; the same command resumes from
    that step, and metrics.jsonl holds each step once."""
    stop_at = 7  # not a checkpoint step
    run = _child(tmp_path, f"term@step:{stop_at}", cache)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _saved(tmp_path) == [5, stop_at]
    assert f"Stopped by SIGTERM after step {stop_at}; its checkpoint is written" in run.stderr
    with open(tmp_path / "metrics.jsonl", "a") as f:  # as if logged after the checkpoint
        f.write(json.dumps({"step": stop_at + 1, "train/loss": -1.0}) + "\n")
    resumed = _child(tmp_path, "none", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored checkpoint of step {stop_at}" in resumed.stderr
    assert _logged_steps(tmp_path) == list(range(1, STEPS + 1))  # each once, stale one replaced
    assert read_metrics(str(tmp_path))[stop_at + 1]["train/loss"] > 0


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_a_disk_that_refuses_a_save_is_named_and_the_previous_checkpoint_survives(
    tmp_path, cache
):
    run = _child(tmp_path, "full@save:10", cache)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: writing the checkpoint of step 10 to {tmp_path}/checkpoints failed (File too "
        "large); the newest complete checkpoint, step 5, is intact. Free disk space (or fix "
        "the directory's permissions) and run the same command to resume"
    ]
    assert _saved(tmp_path) == [5]
    assert verify(str(tmp_path / "checkpoints" / "5")) is None  # intact: resumable
