"""multimodal_ssl.evaluate: a re-evaluated checkpoint gives exactly the metrics the
trainer logged at that step; imported (.npz) weights evaluate; bad arguments name the
flag or config key."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import app, flags
from tiny_checkpoint import write_tiny_npz

from multimodal_ssl import evaluate
from multimodal_ssl.builder import Experiment
from multimodal_ssl.metrics import read_metrics
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.train import train

ROOT = Path(__file__).resolve().parents[1]
# Overrides of the tiny recipe shared by the run and its re-evaluation.
OVERRIDES = {
    "total_steps": 2,
    "loss.impl": "global",  # compiles faster than the ring on one device, same result
    "checkpoint.every_steps": 1,
    "evals.retrieval.max_examples": 32,
}


def tiny_config(**overrides):
    """The tiny recipe with ``OVERRIDES``; of its evals only retrieval (fewer
    compilations; zero-shot runs the same code path)."""
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    del config.evals["zeroshot"]
    for key, value in {**OVERRIDES, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 2-step tiny run (1 device) with checkpoints at steps 1 and 2, evals at step 2."""
    path = tmp_path_factory.mktemp("run")
    train(tiny_config(), str(path), devices=jax.devices()[:1])
    return path


def test_checkpoint_evals_equal_the_trainers(workdir):
    """Re-evaluating the step-2 checkpoint on the same device gives exactly the metrics
    the trainer logged at step 2, under the same names, appended to eval_metrics.jsonl."""
    logged = {k: v for k, v in read_metrics(str(workdir))[2].items() if k.startswith("eval/")}
    assert len(logged) == 10
    config = tiny_config()
    encoder = evaluate.load_encoder(config, checkpoint=str(workdir), devices=jax.devices()[:1])
    assert encoder.step == 2
    metrics = evaluate.run_evals(config, encoder)
    assert metrics == logged
    out = evaluate.default_output(str(workdir / "checkpoints"))
    assert out == str(workdir / "eval_metrics.jsonl")
    evaluate.write_metrics(out, encoder.step, metrics)
    assert json.loads(Path(out).read_text().splitlines()[-1]) == {"step": 2, **logged}


def test_checkpoint_forms_and_steps(workdir):
    """The workdir, its checkpoints/ folder and a step folder all resolve; the params of
    the step asked for are restored (steps 1 and 2 differ)."""
    config = tiny_config()
    exp = Experiment(config, jax.devices()[:1])
    newest, step = evaluate.load_params(exp, str(workdir / "checkpoints"))
    assert step == 2
    first, step = evaluate.load_params(exp, str(workdir / "checkpoints" / "1"))
    assert step == 1
    same, _ = evaluate.load_params(exp, str(workdir), step=1)
    leaves = [jax.tree.leaves(t) for t in (newest, first, same)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[1], leaves[2], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True))
    with pytest.raises(ValueError, match=r"--step=7: not among the checkpoints \[1, 2\]"):
        evaluate.load_params(exp, str(workdir), step=7)
    encoder = evaluate.Encoder({}, None, 2, "")
    with pytest.raises(ValueError, match=r"--evals: \['knn'\] not in config.evals"):
        evaluate.run_evals(config, encoder, ["knn"])


def test_bad_arguments_name_the_flag(tmp_path):
    config = tiny_config()
    with pytest.raises(ValueError, match="exactly one of --checkpoint and --pretrained"):
        evaluate.load_encoder(config)
    with pytest.raises(ValueError, match="--checkpoint=.*not a training workdir"):
        evaluate.load_encoder(config, checkpoint=str(tmp_path))


def test_pretrained_npz(tmp_path):
    """--pretrained: a big_vision .npz (no tokenizer in it, so config.data.tokenizer
    encodes the texts) evaluated with the selected evals."""
    npz = str(tmp_path / "w.npz")
    write_tiny_npz(npz)
    config = tiny_config()
    encoder = evaluate.load_encoder(config, pretrained_path=npz, devices=jax.devices()[:1])
    assert encoder.step == 0 and encoder.tokenizer.max_len == 16
    got = evaluate.run_evals(config, encoder, ["retrieval"])
    assert sorted(got) == sorted(
        f"eval/retrieval/{d}_{m}"
        for d in ("img2txt", "txt2img")
        for m in ("r@1", "r@5", "r@10", "mean_rank", "median_rank")
    )
    assert 0 <= got["eval/retrieval/img2txt_r@1"] <= got["eval/retrieval/img2txt_r@10"] < 1
    assert got["eval/retrieval/txt2img_mean_rank"] > 1  # random towers: not perfect

    config.data.image_size = 32
    with pytest.raises(ValueError, match=r"config.data.image_size: 32, but .* takes 16x16"):
        evaluate.load_pretrained(config, npz)
    with pytest.raises(ValueError, match="--step: only applies to --checkpoint"):
        evaluate.load_encoder(config, pretrained_path=npz, step=3)


def test_command_line_flags(tmp_path):
    """The flags of the module's command line, parsed in-process; ``main`` stops on a
    missing --output before loading anything."""
    fv = flags.FlagValues()
    holders = evaluate.define_flags(fv)
    fv(["evaluate", f"--config={ROOT}/configs/siglip.py:tiny", "--pretrained=x.npz", "--evals=a,b"])
    assert holders["evals"].value == ["a", "b"] and holders["step"].value is None
    assert holders["config"].value.total_steps == 6
    with pytest.raises(app.UsageError, match="--output is required with --pretrained"):
        evaluate.main(holders, ["evaluate"])
