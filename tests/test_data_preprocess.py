"""Preprocessing ops from config strings, against direct PIL / numpy references."""

import numpy as np
import pytest
from PIL import Image

from multimodal_ssl.data.preprocess import NORMALIZE_PRESETS, Preprocess, RandomResizedCrop

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # H=30, W=50


def run(spec, image=PHOTO, size=16, seed=0):
    return Preprocess(spec, size)(image, np.random.default_rng(seed))


def test_deterministic_ops_match_pil():
    pil = Image.fromarray(PHOTO)
    np.testing.assert_array_equal(
        run("resize|value_range"), np.asarray(pil.resize((16, 16), Image.BILINEAR))
    )
    small = np.asarray(pil.resize((27, 16), Image.BILINEAR))  # shorter side 30 -> 16
    np.testing.assert_array_equal(run("resize_small|value_range"), small)
    np.testing.assert_array_equal(run("resize_small|center_crop|value_range"), small[:, 5:21])
    np.testing.assert_array_equal(
        run("resize(20, method='bicubic')|center_crop(10)|value_range", size=99),
        np.asarray(pil.resize((20, 20), Image.BICUBIC))[5:15, 5:15],
    )
    # Already the right size: untouched (generated sources cost nothing).
    same = PHOTO[:16, :16]
    np.testing.assert_array_equal(run("resize_small|center_crop|resize|value_range", same), same)


def test_random_crop_and_flip_are_seeded_slices():
    out = run("random_crop(8)|value_range", seed=3)
    rng = np.random.default_rng(3)
    top, left = rng.integers(0, 23), rng.integers(0, 43)
    np.testing.assert_array_equal(out, PHOTO[top : top + 8, left : left + 8])
    flips = [np.array_equal(run("flip_lr|value_range", seed=s), PHOTO[:, ::-1]) for s in range(40)]
    assert 10 < sum(flips) < 30
    assert all(
        np.array_equal(run("flip_lr(1.0)|value_range", seed=s), PHOTO[:, ::-1]) for s in range(3)
    )
    assert np.array_equal(
        run("random_crop|value_range", seed=5), run("random_crop|value_range", seed=5)
    )


def test_random_resized_crop_boxes_obey_scale_and_ratio():
    op = RandomResizedCrop(0.3, 0.6, 0.5, 2.0, size=8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = op.box(30, 50, rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
        area = h * w / 1500
        assert 0.25 <= area <= 0.65 and 0.4 <= w / h <= 2.4
    # No box fits (min_scale 1 with a ratio far from the image's): central fallback.
    assert RandomResizedCrop(1.0, 1.0, 3.0, 4.0, size=8).box(30, 50, rng) == (6, 0, 17, 50)
    out = run("random_resized_crop(0.3, 0.6, 0.5, 2.0)|value_range", seed=1)
    top, left, h, w = op.box(30, 50, np.random.default_rng(1))
    ref = Image.fromarray(PHOTO).resize(
        (16, 16), Image.BILINEAR, box=(left, top, left + w, top + h)
    )
    np.testing.assert_array_equal(out, np.asarray(ref))


def test_value_ops():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = images.astype(np.float64)
    np.testing.assert_allclose(
        Preprocess("value_range(-1, 1)", 8).normalize(images), x / 127.5 - 1, atol=1e-6
    )
    np.testing.assert_allclose(
        Preprocess("value_range(0, 1)", 8).normalize(images), x / 255, atol=1e-6
    )
    mean, std = NORMALIZE_PRESETS["clip"]
    out = Preprocess("normalize('clip')", 8).normalize(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x / 255 - mean) / std, atol=1e-5)
    out = Preprocess("normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))", 8).normalize(images)
    np.testing.assert_allclose(out, (x / 255 - 0.5) / 0.25, atol=1e-5)


def test_draft_size_only_for_a_leading_fixed_resize():
    assert Preprocess("resize_small|center_crop|value_range", 224).draft_size == 224
    assert Preprocess("resize(64)|value_range", 224).draft_size == 64
    assert Preprocess("random_resized_crop|value_range", 224).draft_size is None


@pytest.mark.parametrize(
    "spec, match",
    [
        ("resize|flip", r"unknown op 'flip'; known: \['center_crop', 'flip_lr'"),
        ("resize", r"must end with a value op \(normalize or value_range\)"),
        ("value_range|resize", r"the value op must be last, found 'resize'"),
        ("resize(0)|value_range", r"op resize: size must be an int >= 1, got 0"),
        ("resize(method='cubic')|value_range", r"method 'cubic' is not one of"),
        ("random_resized_crop(0.9, 0.5)|value_range", r"need 0 < min_scale <= max_scale <= 1"),
        ("flip_lr(2)|value_range", r"p must be in \[0, 1\]"),
        ("normalize('vgg')", r"preset 'vgg': expected one of \['clip', 'imagenet'\]"),
        ("value_range(1, 0)", r"need vmin < vmax"),
        ("resize(x=1)|value_range", r"op resize: .*unexpected keyword argument 'x'"),
        ("resize(|value_range", r"cannot parse op 'resize\('"),
        ("resize(size=abs(3))|value_range", r"cannot parse op"),
    ],
)
def test_bad_specs_name_the_op(spec, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(spec, 16)


def test_center_crop_of_a_small_image_says_resize_first():
    with pytest.raises(ValueError, match=r"center_crop\(40\): image is only 30x50"):
        run("center_crop(40)|value_range", size=16)  # 40 > 30 rows
    with pytest.raises(ValueError, match=r"resize it first"):
        run("center_crop|value_range", size=40)
