"""Fault injection on the tiny recipe: real signals to real processes, non-finite values
in the step, bad configs from the command line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import verify
from multimodal_ssl.metrics import read_metrics
from multimodal_ssl.observe import LossSpikes
from multimodal_ssl.preemption import StopRequest
from multimodal_ssl.sharding import to_global
from multimodal_ssl.train import TrainingDiverged, train
from tests.test_train import ROOT, _main_cmd, tiny


def test_stop_request_turns_signals_into_a_polled_flag():
    """SIGTERM / SIGINT set the flag the loop polls (a second Ctrl-C stops at once); the
    previous handlers come back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.should_stop(1, metrics_step=False)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT" and stop.should_stop(2, metrics_step=False)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"


def _bad_batch_run(policy, bad_steps, steps=4):
    """Steps of the tiny recipe on one device with NaN images at ``bad_steps`` (1-based):
    returns (per-step params, per-step metrics, final state)."""
    config = tiny(**{"train.nan_policy": policy})
    exp = Experiment(config, jax.devices()[:1])
    loader = iter(exp.train_loader())
    state = exp.init_state()
    step = exp.train_step(state)
    params, metrics = [jax.device_get(state.params)], []
    for i in range(1, steps + 1):
        batch = {m: np.array(v) for m, v in next(loader).items() if m in exp.modalities}
        if i in bad_steps:
            batch["image"][0, 0, 0, 0] = np.nan
        state, m = step(state, to_global(batch, exp.mesh))
        params.append(jax.device_get(state.params))
        metrics.append(jax.device_get(m))
    return params, metrics, state


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_skip_drops_only_the_non_finite_step_and_counts_it():
    params, metrics, state = _bad_batch_run("skip", bad_steps={2})
    assert _same(params[2], params[1])  # step 2's update dropped
    assert not _same(params[3], params[2])  # step 3 trains again
    assert [int(m["train/skipped_steps"]) for m in metrics] == [0, 1, 1, 1]
    health = {k: int(v) for k, v in jax.device_get(state.health).items()}
    assert health == {"skipped": 1, "streak": 0, "first_bad": 2, "what": 7}  # loss, grads, params
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params[-1]))


def test_stop_freezes_the_params_from_the_first_non_finite_step():
    params, _, state = _bad_batch_run("stop", bad_steps={2})
    assert _same(params[4], params[1])  # nothing applied from step 2 on
    assert int(jax.device_get(state.health["first_bad"])) == 2


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_a_diverging_run_stops_naming_the_step_and_keeps_finite_checkpoints(tmp_path):
    config = tiny(**{"optim.lr": 1e6, "total_steps": 12, "checkpoint.every_steps": 1})
    config.evals = {}
    with pytest.raises(
        TrainingDiverged,
        match=r"became non-finite at step (\d+); the latest "
        r"checkpoint \(step \d+\) holds finite params",
    ):
        train(config, str(tmp_path), devices=jax.devices()[:1])
    restore = ocp.PyTreeCheckpointer().restore
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved
    for s in saved:
        state = restore(str(tmp_path / "checkpoints" / str(s) / "state"))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"])), s

    config.train.nan_policy, config.train.max_consecutive_skips = "skip", 3
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row had non-finite values"):
        train(config, str(tmp_path / "skip"), devices=jax.devices()[:1])


def _run_main(workdir, *overrides):
    """``python -m multimodal_ssl.main`` on the tiny recipe, output captured."""
    return subprocess.run(
        _main_cmd(workdir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_bad_config_prints_one_line_and_leaves_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = _run_main(tmp_path, "--config.loss.pairs=image-smell")
    assert result.returncode == 2
    assert "error: config.loss.pairs: 'image-smell' names modality 'smell'" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "config.json").read_text() == "{}"
    verbose = _run_main(tmp_path, "--config.loss.pairs=image-smell", "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    bad_value = _run_main(tmp_path, "--config.optim.lr=abc")
    assert bad_value.returncode == 2 and "Traceback" not in bad_value.stderr
    assert (
        "error: flag --config.optim.lr=abc: could not convert string to float" in bad_value.stderr
    )


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """A finished 6-step tiny run with checkpoints 3 and 6 (checksummed)."""
    workdir = tmp_path_factory.mktemp("six")
    config = tiny(**{"total_steps": 6, "checkpoint.every_steps": 3})
    config.evals = {}
    train(config, str(workdir), devices=jax.devices()[:1])
    return config, workdir


def _params(workdir, step):
    state = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))
    return state["params"]


def _damage(step_dir, how):
    files = sorted(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    if how == "delete_metadata":
        (step_dir / "state" / "_METADATA").unlink()
    elif how == "delete_data_state":
        for p in (step_dir / "data").rglob("*"):
            if p.is_file():
                p.unlink()
    else:
        biggest = files[-1]
        data = bytearray(biggest.read_bytes())
        if how == "flip":
            middle = len(data) // 2
            data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        else:  # truncate
            data = data[: len(data) // 2]
        biggest.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
@pytest.mark.parametrize("how", ["flip", "delete_metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(six_steps, tmp_path, caplog, how):
    """Changed bytes, a truncated or missing file: the newest checkpoint is moved aside
    with a warning naming it, the run resumes from the previous one and ends where the
    undamaged run ended."""
    config, original = six_steps
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    _damage(workdir / "checkpoints" / "6", how)
    config = config.copy_and_resolve_references()
    config.total_steps = 6
    train(config, str(workdir), devices=jax.devices()[:1])
    assert "Checkpoint of step 6" in caplog.text and "is unusable" in caplog.text
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints" / "unusable").iterdir()] == ["6"]
    assert _same(_params(workdir, 6), _params(original, 6))  # redone from step 3, identically


@pytest.mark.parametrize(
    "how, problem",
    [
        ("flip", r"file state/\S+ changed \(checksum mismatch\)"),
        ("truncate", r"file state/\S+ changed \(checksum mismatch\)"),
        ("delete_metadata", r"file state/_METADATA is missing"),
        ("delete_data_state", r"file data/\S+ is missing"),
    ],
)
def test_checksums_name_the_damaged_file(six_steps, tmp_path, how, problem):
    _, original = six_steps
    step_dir = tmp_path / "6"
    shutil.copytree(original / "checkpoints" / "6", step_dir)
    assert verify(str(step_dir)) is None
    _damage(step_dir, how)
    assert re.fullmatch(problem, verify(str(step_dir)))


def test_a_checkpoint_of_another_model_size_is_named_not_dropped(six_steps, tmp_path):
    config, original = six_steps
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    config = config.copy_and_resolve_references()
    config.model.image.width = 64
    config.total_steps = 9
    with pytest.raises(
        ValueError,
        match=r"checkpoint of step 6 .* does not fit this config: "
        r"param img/\S+: checkpoint \(.*32.*\), config",
    ):
        train(config, str(workdir), devices=jax.devices()[:1])
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # nothing moved


def test_compile_time_memory_step_times_and_a_profile_are_recorded(tmp_path):
    config = tiny(**{"total_steps": 5, "profile.start_step": 2, "profile.num_steps": 2})
    config.evals = {}
    train(config, str(tmp_path), devices=jax.devices()[:1])
    metrics = read_metrics(str(tmp_path))
    assert metrics[1]["compile/seconds"] > 0 and metrics[1]["memory/temp_mib"] > 0
    assert "compile/seconds" not in metrics[2]  # once
    assert metrics[3]["train/step_time_ms"] > 0 and metrics[3]["train/examples_per_sec"] > 0
    times = [metrics[s]["train/step_time_ms"] for s in (2, 3, 4, 5)]  # 1-step windows
    np.testing.assert_allclose(metrics[5]["train/step_time_ms_p50"], np.median(times))
    np.testing.assert_allclose(metrics[5]["train/step_time_ms_p90"], np.percentile(times, 90))
    assert metrics[5]["train/loss_spikes"] == 0
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_loss_spikes_against_the_running_median_are_warned_and_counted(caplog):
    spikes = LossSpikes(2.0, window=5, min_history=3)
    losses = [4.0, 3.0, 3.5, 3.0, 7.5, float("nan"), 3.0, 2.9, 100.0]
    counts = [spikes.check(i + 1, x)["train/loss_spikes"] for i, x in enumerate(losses)]
    assert counts == [0, 0, 0, 0, 1, 1, 1, 1, 2]  # the NaN is neither a spike nor history
    assert "Loss spike at step 5: 7.5 is 2.3x the median 3.25 of the last 4 logged" in caplog.text
    assert "Loss spike at step 9: 100 is 33.3x the median 3 of the last 5 logged" in caplog.text
    assert LossSpikes(0.0, window=5).check(1, 1e9) == {}  # off


def test_bad_workdirs_are_named(tmp_path):
    from multimodal_ssl.main import check_workdir

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--workdir=\S+/file is a file, not a directory"):
        check_workdir(str(a_file))
    (tmp_path / "run" / "checkpoints").parent.mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(ValueError, match=r"\S+/run/checkpoints is a file; move it away"):
        check_workdir(str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"--workdir=/proc/no/dir cannot be created or written"):
        check_workdir("/proc/no/dir")  # (not writable even for root)


def test_an_image_size_that_does_not_fit_the_patches_is_a_config_error():
    from multimodal_ssl.config import validate

    config = tiny(**{"data.image_size": 18})
    with pytest.raises(
        ValueError,
        match=r"config\.data\.image_size: 18 is not a multiple of the "
        r"8x8 patches of config\.model\.towers\.image; use e\.g\. 16",
    ):
        validate(config)


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_every_minutes_saves_by_wall_time(tmp_path):
    """checkpoint.every_minutes: a save at every metrics step once that much time passed
    since the last one (here: any time at all), besides every_steps and the end."""
    config = tiny(
        **{
            "total_steps": 4,
            "checkpoint.every_steps": 1000,
            "checkpoint.keep": 5,
            "checkpoint.every_minutes": 1e-9,
        }
    )
    config.evals = {}
    train(config, str(tmp_path), devices=jax.devices()[:1])
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved == [1, 2, 3, 4]  # without every_minutes only 4 (the end): test_train.py
