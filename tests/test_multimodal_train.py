"""The trainer with N modalities and randomness in the step: a 4-modality run end to end,
dropout that applies only in training (and changes nothing at rate 0)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from multimodal_ssl.builder import Experiment
from multimodal_ssl.sharding import to_global
from multimodal_ssl.train import train
from tests.test_train import tiny


def test_imagebind_tiny_trains_and_evaluates_every_pair(tmp_path):
    config = tiny("imagebind.py", total_steps=3)
    final = train(config, str(tmp_path), devices=jax.devices()[:1])
    for pair in ("image_text", "image_depth", "image_audio"):  # anchor:image, one (t, b) each
        assert np.isfinite(final[f"train/loss/{pair}"]), pair
        assert f"train/t/{pair}" in final and f"train/b/{pair}" in final
    assert "train/loss/text_audio" not in final  # never trained directly
    pair_losses = [final[f"train/loss/image_{m}"] for m in ("text", "depth", "audio")]
    np.testing.assert_allclose(final["train/loss"], np.mean(pair_losses), rtol=1e-6)
    for name in (
        "retrieval_audio_text/txt2audio_r@1",
        "retrieval_audio_text/audio2txt_r@1",
        "retrieval_image_text/img2txt_r@1",
        "retrieval_depth_audio/depth2audio_r@5",
        "zeroshot_audio/zeroshot_top1",
        "zeroshot_depth/zeroshot_top1",
    ):
        assert 0 <= final[f"eval/{name}"] <= 1, name


def _first_step(config):
    """(train-step loss, deterministic loss of the same params and batch, step fn, state,
    batch) of the first step of ``config`` on one device."""
    exp = Experiment(config, jax.devices()[:1])
    batch = next(iter(exp.train_loader()))
    batch = to_global({m: batch[m] for m in exp.modalities}, exp.mesh)
    state = exp.init_state()
    params = jax.device_get(state.params)
    emb = exp.model.apply({"params": params}, batch, train=False)
    deterministic, _ = exp.objective(emb, params, mesh=exp.mesh)
    step = exp.train_step(state)
    _, metrics = step(state, batch)
    return float(metrics["train/loss"]), float(deterministic), step, exp, batch


REGULARISERS = (
    "model.image.dropout",
    "model.text.dropout",
    "model.image.stochastic_depth",
    "model.text.stochastic_depth",
    "model.image.token_drop",
)


def test_regularisers_apply_in_the_train_step_only_and_zero_is_a_no_op():
    """Rates 0: the train step's loss is the eval forward's. Dropout, stochastic depth and
    token dropping on: it differs, and is a function of (seed, step) alone. (That each
    regulariser acts is tested module by module in test_regularisation.py.)"""
    off, reference, _, _, _ = _first_step(tiny(**dict.fromkeys(REGULARISERS, 0.0)))
    assert off == pytest.approx(reference, rel=1e-6)
    on, reference_on, step, exp, batch = _first_step(tiny(**dict.fromkeys(REGULARISERS, 0.3)))
    assert reference_on == pytest.approx(reference, rel=1e-6)  # same init, eval forward
    assert abs(on - reference) > 1e-4, (on, reference)
    again = float(step(exp.init_state(), batch)[1]["train/loss"])
    assert again == on
