"""What the new objectives need around them: second augmented views (``data.views``:
the pipeline reads them, the image tower embeds them), raw projections for DeCUR,
evaluating embedding prefixes (``evals.<name>.dims``), and the train step of a mixture
that uses all of them (the recipes' full runs are in the README)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fakes import LABELS, build, install_fake_data, oracle_images, oracle_texts

from multimodal_ssl import config as config_lib
from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import abstract_like
from multimodal_ssl.data.modalities import ViewProcessor, make_processors
from multimodal_ssl.data.pipeline import train_loader_from_config
from multimodal_ssl.evals import RetrievalEvaluator
from multimodal_ssl.evals.prefix import run_at_prefixes
from multimodal_ssl.losses.mixture import mix_config, mix_term
from multimodal_ssl.losses.objectives import make_objective, objective_config
from multimodal_ssl.models.towers import MultiTower
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import make_mesh, to_global
from multimodal_ssl.train import _next_batch
from multimodal_ssl.train_state import init_state, make_train_step

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
    params = jax.jit(model.init)(jax.random.key(1), {"a": x, "b": x, "a2": x})["params"]
    plain = MultiTower(towers={"a": tower, "b": tower}, embed_dim=4)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(plain.init, jax.random.key(1), {"a": x, "b": x})["params"]
    )

    @jax.jit
    def outputs(params, x):
        inputs = {"a": x, "a2": 2 * x}
        return (
            model.apply({"params": params}, inputs),
            model.apply({"params": params}, inputs, normalize=False),
            model.apply({"params": params}, {"a": 2 * x}),
        )

    out, raw, doubled = outputs(params, x)
    np.testing.assert_allclose(out["a2"], doubled["a"], rtol=1e-6)
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


# ----------------------------------------------------------------- builder and train step


def test_builder_and_loop_feed_the_views():
    """``Experiment.inputs`` and the loop's batch selection include ``data.views``, and the
    objective of a DeCUR recipe asks for raw projections (nothing compiled here)."""
    exp = Experiment(_recipe("decur.py"), jax.devices()[:1])
    assert sorted(exp.inputs) == ["depth", "depth_view2", "image", "image_view2"]
    assert exp.objective.unit_rows is False
    batch = _next_batch(iter(exp.train_loader()), exp)
    assert set(batch) == set(exp.inputs)
    assert batch["depth_view2"].shape == batch["depth"].shape


def test_train_step_feeds_views_and_raw_projections():
    """One train step of an MLP tower with a view of its input, trained by DeCUR (raw
    projections) mixed with a Matryoshka of SimCLR (unit rows, one head per prefix): the
    loss is the objective of the raw projections of both inputs, the gradient reaches
    the tower and every head."""
    config = config_lib.base_config()
    config.batch_size, config.optim.name, config.optim.warmup_steps = 8, "adamw", 0
    tower = {"type": "mlp", "width": 8, "depth": 1, "mlp_dim": 16}
    model = MultiTower(towers={"a": tower}, embed_dim=16, views={"a2": "a"})
    mrl = mix_term("matryoshka", weight=0.5, dims=(8, 16))
    mrl.objective = objective_config("simclr", views="a-a2", mlp_dim=8, out_dim=4)
    loss = mix_config(decur=mix_term("decur", pairs="a-a2"), mrl=mrl)
    objective = make_objective(loss, ("a", "a2"), embed_dim=16)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    specs = {"a": jax.ShapeDtypeStruct((1, 5), jnp.float32)}
    state = init_state(model, objective, tx, config, mesh, specs)
    params = jax.device_get(state.params)
    assert params["simclr_head_d8"]["hidden"]["kernel"].shape == (8, 8)
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    batch = to_global({"a": x, "a2": x[::-1].copy()}, mesh)
    expected = jax.jit(
        lambda p, b: objective(model.apply({"params": p}, b, normalize=False), p)[0]
    )(params, dict(batch))
    step = make_train_step(model, objective, tx, schedule, config, mesh, abstract_like(state))
    new, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
    assert np.isfinite(metrics["train/mrl/d16/loss/a_a2"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, jax.device_get(new.params))
    assert all(jax.tree.leaves(moved))
