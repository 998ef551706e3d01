"""NaFlex training (SigLIP 2): ``model.towers.image.naflex_max_patches`` makes the
pipelines give the image tower fixed-shape patch dicts of images at their own aspect
ratio, so a training run over mixed aspect ratios compiles its step once; the evals run
on the NaFlex tower; the fixed-resolution path is unchanged."""

import collections
import contextlib
import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from multimodal_ssl import evaluate, gradcache
from multimodal_ssl.data import naflex, rows
from multimodal_ssl.data.modalities import ImageProcessor, make_processors
from multimodal_ssl.data.naflex_pp import NaFlexProcessor
from multimodal_ssl.data.pipeline import train_loader_from_config
from multimodal_ssl.data.preprocess import Preprocess
from multimodal_ssl.evals import common
from multimodal_ssl.evals.retrieval import dedupe_texts
from multimodal_ssl.metrics import read_metrics
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import BATCH_AXES, make_mesh, to_global
from multimodal_ssl.train import train
from tests.test_train import tiny

ROOT = Path(__file__).resolve().parents[1]
MIXED = "random_aspect_crop(0.5, 2.0)|value_range(-1, 1)"


def naflex_tiny(**overrides):
    """configs/siglip2.py:tiny,naflex (16 px scenes, 4 px patches, 16 patches) + overrides."""
    return tiny("siglip2.py", "tiny,naflex", **overrides)


@contextlib.contextmanager
def count_compiles():
    """Counter of XLA compilations by function name (e.g. ``jit(step_fn)``) while open."""
    counts = collections.Counter()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counts[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_recipe_switch():
    config = naflex_tiny()
    tower = config.model.towers.image
    assert (tower.naflex_max_patches, tower.posemb, tower.patch_size) == (16, "learn", 4)
    assert config.distill.local_weight == config.distill.masked_weight == 0
    assert isinstance(make_processors(config, train=True)["image"], NaFlexProcessor)
    fixed = load_recipe(str(ROOT / "configs" / "siglip2.py"), "tiny")
    assert fixed.model.towers.image.naflex_max_patches is None
    assert type(make_processors(fixed, train=True)["image"]) is not NaFlexProcessor
    with pytest.raises(ValueError, match="naflex_max_patches: self-distillation"):
        make_processors(naflex_tiny(**{"distill.masked_weight": 0.25}), train=False)


def test_processor_resizes_to_the_budget_keeping_the_aspect_ratio():
    """A 12 x 30 image, patch 4, 16 patches: 8 x 20 (2 x 5 patches, transformers' size
    rule), patches in (row, col, channel) order after the value op, zero padding."""
    image = np.random.default_rng(0).integers(0, 256, (12, 30, 3), dtype=np.uint8)
    p = NaFlexProcessor("image", None, "value_range(-1, 1)", 16, patch=4, max_patches=16)
    read = p.read(image, "test", np.random.default_rng(0))
    assert read.shape == (*naflex.size_for_max_patches(12, 30, 4, 16), 3) == (8, 20, 3)
    batch = {"image": p.collate([read, p.absent()])["image"]}
    p.finish_into(batch)
    x = batch["image"]
    assert x["patches"].shape == (2, 16, 48) and x["patches"].dtype == np.float32
    np.testing.assert_array_equal(x["spatial_shapes"], [[2, 5], [1, 1]])
    np.testing.assert_array_equal(x["mask"].sum(1), [10, 1])
    want = naflex.patchify(Preprocess("value_range(-1, 1)", 16).normalize(read), 4)
    np.testing.assert_allclose(x["patches"][0, :10], want, atol=1e-6)
    assert not x["patches"][0, 10:].any() and not x["patches"][1, 1:].any()
    assert np.all(x["patches"][1, 0] == -1)  # a missing image: one black patch


def _naflex_batches(config, batch_size, count):
    loader = train_loader_from_config(
        config, batch_size=batch_size, shard_index=0, shard_count=1
    )
    with contextlib.closing(iter(loader)) as it:
        return [next(it)["image"] for _ in range(count)]


def test_pipeline_batches_have_fixed_shapes_and_mixed_aspect_ratios():
    """Every batch is padded to N = 16 patches, not to its largest image (batches of 2
    whose largest image has 15 patches show the difference); real patches first, then
    zero padding; seeded crops of several aspect ratios within one batch."""
    config = naflex_tiny()
    grids, largest = set(), set()
    for batch_size in (8, 2):
        batches = _naflex_batches(config, batch_size, 4)
        for x in batches:
            assert {k: (v.shape, v.dtype) for k, v in x.items()} == {
                "patches": ((batch_size, 16, 48), np.float32),
                "mask": ((batch_size, 16), bool),
                "spatial_shapes": ((batch_size, 2), np.int32),
            }
            h, w = x["spatial_shapes"].T
            assert np.all(h * w <= 16)
            for i in range(batch_size):
                np.testing.assert_array_equal(x["mask"][i], np.arange(16) < h[i] * w[i])
                assert not x["patches"][i, h[i] * w[i] :].any()
            grids |= {tuple(s) for s in x["spatial_shapes"]}
            largest.add(int(x["mask"].sum(1).max()))
            if batch_size == 8:
                assert len({tuple(s) for s in x["spatial_shapes"]}) > 1
    again = _naflex_batches(config, 8, 4)[-1]  # same config, same crops
    np.testing.assert_array_equal(again["patches"], _naflex_batches(config, 8, 4)[-1]["patches"])
    wide, tall = any(w > h for h, w in grids), any(h > w for h, w in grids)
    assert wide and tall and len(largest) > 1, (grids, largest)


GOLDEN = {  # recorded before NaFlex (commit 662d8bd): the fixed-size path is unchanged
    "resize_small|center_crop|value_range(-1, 1)": ["65a05497e9315876", "4b3e022513ff235d"],
    "random_resized_crop(0.5)|flip_lr|value_range(-1, 1)": ["0c3cde78dcc8a8a2", "c904a2d7d3d7e2d9"],
}


def _digest(batch):
    d = hashlib.sha256()
    for k in sorted(batch):
        v = np.asarray(batch[k])
        d.update(k.encode() + str(v.dtype).encode() + str(v.shape).encode() + v.tobytes())
    return d.hexdigest()[:16]


@pytest.mark.parametrize("spec", sorted(GOLDEN))
def test_fixed_resolution_batches_are_bitwise_unchanged(spec):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    config.data.pp_train = spec
    assert type(make_processors(config, train=True)["image"]) is ImageProcessor
    loader = train_loader_from_config(config, batch_size=8, shard_index=0, shard_count=1)
    with contextlib.closing(iter(loader)) as it:
        assert [_digest(next(it)) for _ in range(2)] == GOLDEN[spec]
    source = common.open_eval_source(
        "generated:shapes:test", image_size=16, seed=0, source_kwargs=None
    )
    processors = make_processors(config, train=False)
    batch = next(iter(common.make_batches(
        source, batch_size=8, processors=processors, max_examples=8
    )))
    assert _digest(batch) == "6384078b6ea05c9f"


def test_dict_inputs_are_batch_sharded_and_microbatched():
    """to_global shards each array of a dict entry on the batch axes; GradCache's
    micro-batches split it like any input (same loss and gradient as one batch)."""
    mesh = make_mesh({"data": 2}, jax.devices()[:2])
    rng = np.random.default_rng(0)
    x = {"patches": rng.normal(size=(8, 4, 3)).astype(np.float32),
         "mask": np.arange(4)[None] < rng.integers(1, 5, (8, 1)),
         "spatial_shapes": rng.integers(1, 3, (8, 2)).astype(np.int32)}
    batch = to_global({"image": x}, mesh)
    for leaf in jax.tree.leaves(batch):
        assert leaf.sharding.spec == P(BATCH_AXES) and leaf.shape[0] == 8

    def embed_fn(w, inputs):
        m = inputs["image"]["mask"][..., None]
        mean = (inputs["image"]["patches"] * m).sum(1) / m.sum(1)
        return {"z": mean @ w + inputs["image"]["spatial_shapes"][:, :1]}

    def loss_fn(w, emb):
        z = emb["z"]
        return jax.nn.logsumexp(z @ z.T, axis=1).mean(), {}

    w = jax.numpy.asarray(rng.normal(size=(3, 3)), jax.numpy.float32)
    out = [
        jax.jit(lambda w, b, m=m: gradcache.value_and_grad(embed_fn, loss_fn, w, b, m))(w, batch)
        for m in (1, 2)
    ]
    np.testing.assert_allclose(out[0][0][0], out[1][0][0], rtol=1e-5)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


def test_row_helpers_on_dict_inputs():
    """Dict inputs pad with copies of their first row (valid NaFlex rows, no NaN), and
    duplicate dict rows (text -> image retrieval candidates) are merged like texts."""
    mask = np.array([[1, 0], [1, 1], [1, 0]], bool)
    x = {"patches": np.arange(12.0).reshape(3, 2, 2), "mask": mask}
    padded = rows.pad(x, 5)
    assert rows.num_rows(padded) == 5 and np.array_equal(padded["mask"][3:], x["mask"][[0, 0]])
    assert np.array_equal(rows.pad(np.ones((2, 3)), 4)[2:], np.zeros((2, 3)))  # as before
    dup = rows.concat([x, rows.take(x, [2, 0])])  # rows 3, 4 copy rows 2, 0
    unique, groups = dedupe_texts(dup)
    assert rows.num_rows(unique) == 3
    assert sorted(map(list, groups)) == [[0, 4], [1], [2, 3]]


def test_naflex_training_compiles_the_step_once_and_its_checkpoint_evaluates(tmp_path):
    """Three steps (batch 2) on 2 devices over mixed aspect ratios, with the zero-shot and retrieval
    evals on the NaFlex tower (eval images of mixed aspect ratios too): one compilation of
    the train step. The checkpoint then evaluates (the ``evaluate`` CLI's path) to the
    same retrieval metrics; its image embedding compiles once for all eval batches, and an image's
    embedding does not depend on the batch it is padded into. (Global loss and AdamW:
    the recipe's ring loss and Muon only add compile time.)"""
    config = naflex_tiny(**{
        "total_steps": 3, "batch_size": 2, "loss.impl": "global", "optim.name": "adamw",
        "data.pp_eval": MIXED,
    })
    config.checkpoint.every_steps = 3
    # The steps' largest images differ (15, 16, 15 patches): padding to each batch's
    # largest image would compile twice.
    assert [int(x["mask"].sum(1).max()) for x in _naflex_batches(config, 2, 3)] == [15, 16, 15]
    with count_compiles() as compiles:
        final = train(config, str(tmp_path), devices=jax.devices()[:2])
    assert compiles["jit(step_fn)"] == 1, dict(compiles)
    metrics = read_metrics(str(tmp_path))
    losses = [metrics[s]["train/loss"] for s in range(1, 4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    evals = {k: v for k, v in final.items() if k.startswith("eval/")}
    assert 0 <= evals["eval/zeroshot/zeroshot_top1"] <= 1 and len(evals) > 10

    encoder = evaluate.load_checkpoint(config, str(tmp_path), devices=jax.devices()[:2])
    again = evaluate.run_evals(config, encoder, ["retrieval"])
    assert again and all(k in evals for k in again)
    np.testing.assert_allclose([evals[k] for k in again], list(again.values()), atol=1e-6)
    embed = encoder.embed["image"]
    assert embed.func.__self__._fns["image"]._cache_size() == 1
    processors = make_processors(config, train=False, tokenizer=encoder.tokenizer)
    source = common.open_eval_source(
        "generated:shapes:test", image_size=16, seed=0, source_kwargs=None
    )
    batches = list(common.make_batches(
        source, batch_size=32, processors={"image": processors["image"]}, max_examples=64
    ))
    images = rows.concat([b["image"] for b in batches])
    assert len({tuple(s) for s in images["spatial_shapes"]}) > 2
    whole, _ = common.embed_pass(batches, "image", embed)
    chunked = common.embed_in_batches(embed, images, 24)  # 24 + 24 + 16 (padded)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(embed(rows.take(images, slice(5, 6))), whole[5:6], atol=1e-5)
