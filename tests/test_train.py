"""End-to-end trainer tests on the tiny recipe: outputs, device-count invariance, the
command line (kill-and-resume: ``test_kills.py``)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from multimodal_ssl.metrics import read_metrics
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.train import train

ROOT = Path(__file__).resolve().parents[1]


def tiny(name="siglip.py", variant="tiny", **overrides):
    config = load_recipe(str(ROOT / "configs" / name), variant)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def losses(workdir, steps=None):
    metrics = read_metrics(str(workdir))
    steps = steps or sorted(s for s, m in metrics.items() if "train/loss" in m)
    return np.array([metrics[s]["train/loss"] for s in steps])


def test_tiny_run_writes_metrics_checkpoints_and_evals(tmp_path):
    final = train(tiny(), str(tmp_path), devices=jax.devices()[:1])
    metrics = read_metrics(str(tmp_path))
    assert sorted(s for s, m in metrics.items() if "train/loss" in m) == [1, 2, 3, 4, 5, 6]
    for key in ("train/lr", "train/t", "train/b", "train/grad_norm", "train/examples_per_sec"):
        assert key in metrics[6], key
    np.testing.assert_allclose(metrics[1]["train/t"], np.log(10.0), rtol=1e-5)
    np.testing.assert_allclose(metrics[1]["train/b"], -10.0, rtol=1e-5)
    for key in ("eval/zeroshot/zeroshot_top1", "eval/zeroshot/zeroshot_top5",
                "eval/retrieval/img2txt_r@1", "eval/retrieval/txt2img_r@10"):
        assert 0.0 <= metrics[6][key] <= 1.0, key
        assert final[key] == metrics[6][key]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
    assert np.all(np.isfinite(losses(tmp_path)))


def _main_cmd(workdir, *overrides):
    return [sys.executable, "-m", "multimodal_ssl.main", f"--config={ROOT}/configs/siglip.py:tiny",
            f"--workdir={workdir}", *overrides]


def test_cli_rejects_unknown_override(tmp_path):
    result = subprocess.run(_main_cmd(tmp_path, "--config.optim.lrr=1"), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: config.optim.lrr: unknown key (from --config.optim.lrr=1); valid keys " \
        "here are ['b1', 'b2'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("recipe, chunk_size", [("siglip.py", None), ("clip.py", 1)])
def test_ring_on_eight_devices_trains_like_global_on_one(tmp_path, recipe, chunk_size):
    """loss.impl=ring over 8 emulated devices gives the loss curve of impl=global on one
    device: the device count and the loss implementation change nothing."""
    curves = {}
    for impl, devices in (("global", 1), ("ring", 8)):
        config = tiny(recipe, **{"total_steps": 10, "loss.impl": impl})
        config.loss.chunk_size = chunk_size if impl == "ring" else None
        config.evals = {}
        train(config, str(tmp_path / impl), devices=jax.devices()[:devices])
        curves[impl] = losses(tmp_path / impl)
    assert len(curves["ring"]) == 10 and curves["ring"][0] != curves["ring"][-1]
    np.testing.assert_allclose(curves["ring"], curves["global"], rtol=1e-4)
