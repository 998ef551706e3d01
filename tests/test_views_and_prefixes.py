"""What the new objectives need around them: second augmented views (``data.views``:
the pipeline reads them, the image tower embeds them), raw projections for DeCUR,
evaluating embedding prefixes (``evals.<name>.dims``), and the train step of a mixture
of all of them from a recipe (the recipes' full runs are in the README)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fakes import LABELS, build, install_fake_data, oracle_images, oracle_texts

from multimodal_ssl import config as config_lib
from multimodal_ssl.builder import Experiment
from multimodal_ssl.data.modalities import ViewProcessor, make_processors
from multimodal_ssl.data.pipeline import train_loader_from_config
from multimodal_ssl.evals import RetrievalEvaluator
from multimodal_ssl.evals.prefix import run_at_prefixes
from multimodal_ssl.losses.mixture import mix_term
from multimodal_ssl.models.towers import MultiTower
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import to_global

ROOT = Path(__file__).resolve().parents[1]


def _recipe(name, arg="tiny"):
    return load_recipe(str(ROOT / "configs" / name), arg)


# ------------------------------------------------------------------------------ config


def test_views_config_is_checked_with_the_key_named():
    config = _recipe("slip.py")
    config_lib.validate(config)
    config.data.views = {"image_view2": "video"}
    with pytest.raises(ValueError, match=r"^config\.data\.views\.image_view2: 'video' has no"):
        config_lib.validate(config)
    config.data.views = {"text": "image"}
    with pytest.raises(ValueError, match=r"^config\.data\.views\.text: names a tower"):
        config_lib.validate(config)
    config.data.views = {}  # the SimCLR term now names an input that does not exist
    with pytest.raises(ValueError, match=r"^config\.loss\.terms\.simclr\.views: .*image_view2"):
        config_lib.validate(config)


# -------------------------------------------------------------------------------- data


@pytest.mark.parametrize("random", [True, False], ids=["random_crop", "center_crop"])
def test_second_view_is_read_again_with_independent_augmentation(random):
    config = _recipe("slip.py")
    if not random:
        config.data.pp_train = "resize_small|center_crop|value_range(-1, 1)"
    processors = make_processors(config, train=True)
    assert isinstance(processors["image_view2"], ViewProcessor)
    assert processors["image_view2"].reads == "image"
    assert "image_view2" not in make_processors(config, train=False)  # evals: no views
    batch = next(iter(train_loader_from_config(config, batch_size=8, shard_index=0,
                                               shard_count=1)))
    view, image = batch["image_view2"], batch["image"]
    assert view.shape == image.shape and view.dtype == image.dtype == np.float32
    differs = [not np.array_equal(a, b) for a, b in zip(view, image, strict=True)]
    assert (sum(differs) >= 4) if random else not any(differs)


# ------------------------------------------------------------------------------- model


def test_views_share_their_towers_params_and_raw_projections_normalise_to_the_output():
    tower = {"type": "mlp", "width": 8, "depth": 1, "mlp_dim": 16}
    model = MultiTower(towers={"a": tower, "b": tower}, embed_dim=4, views={"a2": "a"})
    x = jax.random.normal(jax.random.key(0), (3, 5))
    params = model.init(jax.random.key(1), {"a": x, "b": x, "a2": x})["params"]
    plain = MultiTower(towers={"a": tower, "b": tower}, embed_dim=4)
    assert jax.tree.structure(params) == jax.tree.structure(
        plain.init(jax.random.key(1), {"a": x, "b": x})["params"]
    )
    out = model.apply({"params": params}, {"a": x, "a2": 2 * x})
    raw = model.apply({"params": params}, {"a": x, "a2": 2 * x}, normalize=False)
    np.testing.assert_allclose(out["a2"], model.apply({"params": params}, {"a": 2 * x})["a"])
    unit = raw["a"] / jnp.linalg.norm(raw["a"], axis=1, keepdims=True)
    np.testing.assert_allclose(out["a"], unit, rtol=1e-6)
    assert not np.allclose(jnp.linalg.norm(raw["a"], axis=1), 1.0)


# ------------------------------------------------------------------------------- evals


def test_prefix_metrics_are_the_metrics_of_renormalised_prefixes_towers_run_once():
    full = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    calls = []

    def embed(inputs):
        calls.append(len(inputs))
        return full[inputs]

    def compute(fns):
        e = fns["image"](np.arange(5))
        return {"eval/r/first": float(e[0, 0]), "eval/r/width": float(e.shape[1]),
                "eval/r/norm": float(np.linalg.norm(e[1]))}

    out = run_at_prefixes(compute, {"image": embed}, (2, 4), "r")
    assert calls == [5]  # one tower run: every prefix reads the cached embeddings
    assert out["eval/r/width"] == 6 and out["eval/r/first"] == pytest.approx(full[0, 0])
    for d in (2, 4):
        assert out[f"eval/r/d{d}/width"] == d
        assert out[f"eval/r/d{d}/norm"] == pytest.approx(1.0, rel=1e-6)
        expected = full[0, 0] / np.linalg.norm(full[0, :d])
        assert out[f"eval/r/d{d}/first"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"^config\.evals\.r\.dims: 8 exceeds"):
        run_at_prefixes(compute, {"image": embed}, (8,), "r")


@pytest.mark.parametrize("dims", [(16, 8), (0,), "16", (4, True)])
def test_eval_dims_errors_name_the_key(dims):
    cfg = {"type": "retrieval", "data": "generated:shapes:test", "dims": dims}
    with pytest.raises(ValueError, match=r"^evals\.r\.dims: "):
        RetrievalEvaluator.resolve("r", cfg)


def test_evaluator_dims_report_each_prefix(monkeypatch):
    """Oracle embeddings ``onehot(class) + 0.5`` of 4 classes: the 2-dim prefix tells
    classes 0 and 1 apart but maps 2 and 3 to one point (a tie: wrong), the 4-dim one
    keeps all."""
    install_fake_data(monkeypatch)
    ev = build("zeroshot", batch_size=4, dims=(2, 4))
    m = ev.run({"image": lambda x: oracle_images(x) + 0.5,
                "text": lambda x: oracle_texts(x) + 0.5})
    share = np.mean(np.isin(LABELS, (0, 1)))
    assert m["eval/ev/zeroshot_top1"] == 1.0 and m["eval/ev/d4/zeroshot_top1"] == 1.0
    assert m["eval/ev/d2/zeroshot_top1"] == pytest.approx(share)


# ------------------------------------------------------------------------ the train step


def test_train_step_of_a_mixture_with_views_and_raw_projections():
    """One step of ``matryoshka.py:slip_tiny`` plus a DeCUR term: the batch carries the
    second view, every term logs its loss, and DeCUR saw the raw projections (its metric
    equals DeCUR on ``normalize=False`` outputs of the same params and batch)."""
    config = _recipe("matryoshka.py", "slip_tiny")
    config.loss.terms.decur = mix_term("decur", weight=0.1, pairs="image-image_view2")
    config.optim.name = "adamw"  # compiles faster than the recipe's Muon
    exp = Experiment(config, jax.devices()[:1])
    batch = next(iter(exp.train_loader()))
    assert exp.inputs == ("image", "text", "image_view2") and exp.objective.unit_rows is False
    batch = to_global({k: batch[k] for k in exp.inputs}, exp.mesh)
    state = exp.init_state()
    params = jax.device_get(state.params)
    assert {"t_d4", "b_d16", "simclr_head"} <= set(params)
    _, metrics = exp.train_step(state)(state, batch)
    metrics = {k: float(v) for k, v in metrics.items()}
    for key in ("train/loss/siglip", "train/loss/simclr", "train/loss/decur",
                "train/siglip/loss/d4", "train/siglip/d8/t", "train/decur/loss/common",
                "train/simclr/loss/image_image_view2"):
        assert np.isfinite(metrics[key]), key
    weighted = metrics["train/loss/siglip"] + metrics["train/loss/simclr"]
    np.testing.assert_allclose(metrics["train/loss"], weighted + 0.1 * metrics["train/loss/decur"],
                               rtol=1e-5)
    views = {m: batch[m] for m in ("image", "image_view2")}
    raw = exp.model.apply({"params": params}, views, normalize=False)
    decur = exp.objective.terms["decur"][1]
    np.testing.assert_allclose(metrics["train/loss/decur"], float(decur(raw, params)[0]),
                               rtol=1e-4)
