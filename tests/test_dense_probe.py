"""The dense probe: ``generated:shapes`` segmentation masks against the renderer, patch
targets and mIoU against hand-made answers and a naive reference, the patch tokens of
the embedder, and the evaluator end to end on a tiny model (random, constant and oracle
features) on a 2-device mesh."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest

from multimodal_ssl import evals
from multimodal_ssl.builder import Experiment, build_evaluator
from multimodal_ssl.data import shapes, shapes_masks
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.evals import segmentation
from multimodal_ssl.recipes import load_recipe, shapes_dense_evals

ROOT = Path(__file__).resolve().parents[1]


def obj(shape, color, x=0.5, y=0.5, depth=0.5, size=1, shade=1.0):
    return shapes.SceneObject(
        shapes.SHAPES.index(shape), shapes.COLORS.index(color), size, 4, x, y, depth, shade
    )


def cls(shape, color):
    return 1 + shapes.shape_color_label(shapes.SHAPES.index(shape), shapes.COLORS.index(color))


# ------------------------------------------------------------------- the masks


def test_mask_of_a_hand_built_scene_matches_the_image():
    size = 32
    near = obj("circle", "red", depth=0.3, size=0)  # in front of the square's centre
    far = obj("square", "blue", depth=0.7)
    other = obj("triangle", "green", x=0.2, y=0.8, size=0, depth=0.5, shade=0.8)
    image, depth = shapes.render([far, near, other], size)
    mask = shapes_masks.segmentation([near, other, far], size)  # order does not matter
    assert mask.dtype == np.int32 and mask.shape == (size, size)
    assert shapes_masks.NUM_CLASSES == 25
    assert set(np.unique(mask)) == {
        0,
        cls("circle", "red"),
        cls("square", "blue"),
        cls("triangle", "green"),
    }
    assert mask[16, 16] == cls("circle", "red")
    assert mask[11, 11] == mask[20, 20] == cls("square", "blue")  # corners out of the circle
    assert mask[26, 6] == cls("triangle", "green")
    np.testing.assert_array_equal(mask > 0, depth < shapes.BACKGROUND_DEPTH)
    # Every background pixel away from an edge has the background colour; every pixel
    # of a class is, away from edges, that object's colour x shade.
    interior = np.ones((size, size), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= np.roll(mask, (dy, dx), axis=(0, 1)) == mask
    for c, rgb in (
        (0, shapes.BACKGROUND_RGB),
        (cls("circle", "red"), shapes.RGB[0]),
        (cls("square", "blue"), shapes.RGB[4]),
        (cls("triangle", "green"), shapes.RGB[3] * 0.8),
    ):
        pixels = image[interior & (mask == c)]
        assert len(pixels) >= 4, c
        np.testing.assert_array_equal(pixels, np.broadcast_to(np.rint(rgb), pixels.shape))


def test_relabel_to_shapes_and_colours():
    mask = np.array([[0, cls("circle", "red")], [cls("diamond", "purple"), cls("square", "blue")]])
    np.testing.assert_array_equal(shapes_masks.relabel(mask, "shape"), [[0, 1], [4, 2]])
    np.testing.assert_array_equal(shapes_masks.relabel(mask, "color"), [[0, 1], [6, 5]])
    np.testing.assert_array_equal(shapes_masks.relabel(mask, "shape_color"), mask)
    assert shapes_masks.classnames("shape") == ["background", *shapes.SHAPES]
    with pytest.raises(ValueError, match="kind"):
        shapes_masks.relabel(mask, "size")


def test_source_serves_the_field_deterministically_and_the_default_record_is_unchanged():
    opts = shapes.ShapesOptions(min_objects=1, max_objects=9)
    reqs = [FieldRequest("segmentation", None, False), FieldRequest("image", None, True)]
    a, b = (
        shapes.ShapesSource(split="train", image_size=32, seed=1, options=opts, requests=reqs)
        for _ in range(2)
    )
    plain = shapes.ShapesSource(split="train", image_size=32, seed=1, options=opts)
    assert "segmentation" in a.provides and "segmentation" not in plain.provides
    for i in range(40):
        ra, rb, rp = a[i], b[i], plain[i]
        scene = a.scene(i)
        image, depth = shapes.render(scene, 32)
        np.testing.assert_array_equal(ra["segmentation"], rb["segmentation"])
        np.testing.assert_array_equal(ra["segmentation"], shapes_masks.segmentation(scene, 32))
        np.testing.assert_array_equal(ra["image"], image)
        assert set(rp) == {"image", "depth", "caption", "label", "shape_label", "color_label", "id"}
        np.testing.assert_array_equal(rp["image"], image)
        np.testing.assert_array_equal(rp["depth"], depth)
        # Each labelled pixel has the depth of an object of its class (nearest wins).
        seg = ra["segmentation"]
        np.testing.assert_array_equal(seg > 0, depth < shapes.BACKGROUND_DEPTH)
        for c in np.unique(seg[seg > 0]):
            depths = [
                o.depth for o in scene if cls(shapes.SHAPES[o.shape], shapes.COLORS[o.color]) == c
            ]
            assert np.isin(depth[seg == c], np.float32(depths)).all()


# ---------------------------------------------------------- targets and metrics


def test_patch_targets_majority_with_ties_to_the_lower_class():
    masks = np.array(
        [
            [[1, 1, 2, 0], [1, 0, 2, 2], [0, 0, 3, 3], [0, 3, 3, 0]],
            [[1, 2, 4, 4], [2, 1, 0, 4], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]
    )
    np.testing.assert_array_equal(
        segmentation.patch_targets(masks, 4, 5), [[1, 2, 0, 3], [1, 4, 0, 0]]
    )
    np.testing.assert_array_equal(segmentation.patch_targets(masks, 16, 5), masks.reshape(2, 16))
    np.testing.assert_array_equal(segmentation.patch_targets(masks, 1, 5), [[0], [0]])
    up = segmentation.upsample(np.array([[1, 2, 0, 3]]), 4, 4)
    np.testing.assert_array_equal(up[0], [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3], [0, 0, 3, 3]])
    with pytest.raises(ValueError, match="tile"):
        segmentation.patch_targets(masks, 3, 5)
    with pytest.raises(ValueError, match="class ids"):
        segmentation.patch_targets(masks, 4, 4)


def _miou_reference(targets, preds, num_classes):
    ious = []
    for c in range(num_classes):
        t, p = targets == c, preds == c
        union = np.sum(t | p)
        if union:
            ious.append(np.sum(t & p) / union)
    return float(np.mean(ious)), float(np.mean(targets == preds))


def test_miou_known_answer_and_naive_reference():
    targets = np.array([0, 0, 0, 1, 1, 3])
    preds = np.array([0, 0, 1, 1, 2, 0])
    # class 0: TP 2, union 4 -> 0.5; 1: TP 1, union 3; 2: predicted only -> 0;
    # 3: missed -> 0; classes 4, 5 in neither -> left out.
    conf = segmentation.confusion(targets, preds, 6)
    value, iou = segmentation.miou(conf)
    assert value == pytest.approx((0.5 + 1 / 3) / 4)
    assert np.isnan(iou[4]) and np.isnan(iou[5])
    assert segmentation.accuracy(conf) == pytest.approx(3 / 6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.choice([0, 0, 0, 1, 3, 5], size=(7, 9))  # 2, 4 never targets
        p = rng.choice([0, 1, 2, 3, 5], size=(7, 9))  # 4 never predicted: absent from both
        ref_miou, ref_acc = _miou_reference(t, p, 6)
        conf = segmentation.confusion(t, p, 6)
        assert segmentation.miou(conf)[0] == pytest.approx(ref_miou)
        assert segmentation.accuracy(conf) == pytest.approx(ref_acc)
    with pytest.raises(ValueError, match="empty"):
        segmentation.miou(np.zeros((3, 3)))


def test_dense_probe_metrics_separable_tokens_reach_one():
    """Tokens near the one-hot of their patch's class; 48 x 64 train patches of 25
    classes, as in the oracle test below (one L-BFGS compilation serves both)."""
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 25, size=(60, 8, 8))
    masks = np.repeat(np.repeat(masks, 2, axis=1), 2, axis=2)  # constant 2x2 patches
    targets = segmentation.patch_targets(masks, 64, 25)
    tokens = np.eye(25, dtype=np.float32)[targets] + 0.01 * rng.normal(size=(60, 64, 25))
    m = evals.dense_probe_metrics(
        tokens[:48], masks[:48], tokens[48:], masks[48:], 25, l2_grid=(1e-4, 1e-2)
    )
    assert m["miou"] == m["patch_miou"] == m["pixel_acc"] == m["patch_acc"] == 1.0
    shuffled = evals.dense_probe_metrics(
        tokens[:48], masks[:48], tokens[48:], masks[::-1][:12], 25, l2_grid=(1e-4,)
    )
    assert shuffled["miou"] < 0.2  # the same tokens scored against other scenes' masks


# -------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny():
    """The tiny SigLIP at 32 px with 4 px patches (8 x 8 tokens), gap pooling, two-object
    scenes, untrained, on a 2-device mesh, and its dense-probe evaluator (two l2 values,
    100 L-BFGS steps). (The ViT's tokens leave a class token out: test_distill.py.)"""
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    config.data.image_size = 32
    config.data.shapes.max_objects = 2
    config.model.towers.image.patch_size = 4
    config.model.towers.image.pool = "gap"
    config.evals = shapes_dense_evals(every_steps=1000, max_examples=48, max_train_examples=48)
    config.evals.dense_probe.l2_grid = (1e-4, 1e-2)
    config.evals.dense_probe.max_steps = 100
    exp = Experiment(config, jax.devices()[:2])
    image = np.zeros((1, 32, 32, 3), np.float32)
    embedder = exp.embedder(jax.jit(exp.model.init)(jax.random.key(0), {"image": image})["params"])
    evaluator = build_evaluator(exp.config, "dense_probe", exp.eval_processors)
    return embedder, evaluator


class FakeImageFn:
    """An image embed function whose ``patch_tokens`` are ``tokens_of(images)``."""

    def __init__(self, tokens_of):
        self.patch_tokens = tokens_of

    def __call__(self, images):
        raise AssertionError("the dense probe reads patch tokens only")


def _all_masks(evaluator):
    out = []
    for split, data in (("train", evaluator.train_data), ("test", evaluator.data)):
        for batch in data.batches():
            out.append((batch["image"], evaluator.masks(split, batch["id"])))
    return out


def test_embedder_patch_tokens_are_the_towers_tokens(tiny):
    """With gap pooling the embedding is the normalised projected mean of the tokens."""
    embedder, _ = tiny
    # 48 rows: the evaluator's batches below (one compilation)
    images = np.random.default_rng(0).normal(size=(48, 32, 32, 3)).astype(np.float32)
    fn = embedder.embed_fns()["image"]
    tokens = fn.patch_tokens(images)
    assert tokens.shape == (48, 64, 32) and tokens.dtype == np.float32
    head = embedder.params["img"]["head"]
    z = tokens.mean(axis=1) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(fn(images), z / np.linalg.norm(z, axis=1, keepdims=True), atol=2e-5)
    np.testing.assert_allclose(fn.patch_tokens(images[1:]), tokens[1:], atol=1e-5)  # padded
    assert not np.allclose(tokens[0], tokens[1])


def test_untrained_model_scores_low(tiny):
    embedder, evaluator = tiny
    m = evaluator.run(embedder.embed_fns())
    keys = {"miou", "pixel_acc", "patch_miou", "patch_acc", "l2"}
    assert set(m) == {f"eval/dense_probe/{k}" for k in keys}
    assert all(np.isfinite(v) for v in m.values())
    assert 0 <= m["eval/dense_probe/miou"] < 0.5
    assert 0 <= m["eval/dense_probe/patch_miou"] < 0.5
    assert m["eval/dense_probe/l2"] in (1e-4, 1e-2)


def test_constant_features_predict_background(tiny):
    _, evaluator = tiny
    m = evaluator.run({"image": FakeImageFn(lambda x: np.zeros((len(x), 64, 25), np.float32))})
    masks = np.concatenate([evaluator.masks("test", b["id"]) for b in evaluator.data.batches()])
    targets = segmentation.patch_targets(masks, 64, 25)
    ref_miou, ref_acc = _miou_reference(targets, np.zeros_like(targets), 25)
    assert m["eval/dense_probe/patch_acc"] == pytest.approx(ref_acc)
    assert m["eval/dense_probe/patch_miou"] == pytest.approx(ref_miou)
    pix_miou, pix_acc = _miou_reference(masks, np.zeros_like(masks), 25)
    assert m["eval/dense_probe/miou"] == pytest.approx(pix_miou)
    assert m["eval/dense_probe/pixel_acc"] == pytest.approx(pix_acc)
    assert ref_miou < 0.1  # several object classes, each with IoU 0


def test_oracle_features_reach_one(tiny):
    _, evaluator = tiny
    lookup = {}
    for images, masks in _all_masks(evaluator):
        onehot = np.eye(25, dtype=np.float32)[segmentation.patch_targets(masks, 64, 25)]
        for image, t in zip(images, onehot, strict=True):
            lookup[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()] = t

    def tokens_of(images):
        return np.stack(
            [lookup[hashlib.sha1(np.ascontiguousarray(i).tobytes()).hexdigest()] for i in images]
        )

    m = evaluator.run({"image": FakeImageFn(tokens_of)})
    assert m["eval/dense_probe/patch_miou"] == 1.0
    assert m["eval/dense_probe/patch_acc"] == 1.0
    assert m["eval/dense_probe/miou"] > 0.6  # 4 px patches blur the outlines
    assert m["eval/dense_probe/pixel_acc"] > 0.9


def test_errors_name_the_problem(tiny):
    _, evaluator = tiny
    with pytest.raises(ValueError, match="no patch tokens"):
        evaluator.run({"image": lambda x: np.zeros((len(x), 4), np.float32)})
    cfg = dict(shapes_dense_evals(10).dense_probe)
    with pytest.raises(ValueError, match="dims"):
        evals.DenseProbeEvaluator.resolve("d", {**cfg, "dims": (4,)})
    with pytest.raises(ValueError, match="classes"):
        evals.DenseProbeEvaluator.resolve("d", {**cfg, "classes": "size"})
