"""generated:shapes: determinism, rendering geometry, captions vs labels, split
disjointness, and the source registry."""

import math
import re

import numpy as np
import pytest

from multimodal_ssl.data import shapes, sources
from multimodal_ssl.data.shapes import SceneObject, ShapesOptions, ShapesSource


def make_source(split="train", image_size=16, seed=0, **options):
    return ShapesSource(
        split=split, image_size=image_size, seed=seed, options=ShapesOptions(**options)
    )


def obj(shape, color, size="large", position="center", x=0.5, y=0.5, depth=0.5, shade=1.0):
    return SceneObject(
        shape=shapes.SHAPES.index(shape),
        color=shapes.COLORS.index(color),
        size=shapes.SIZES.index(size),
        position=shapes.POSITIONS.index(position),
        x=x,
        y=y,
        depth=depth,
        shade=shade,
    )


def pixel_offsets(image_size, x=0.5, y=0.5):
    """Offsets (pixels) of each pixel centre from the object centre: dx [1, S], dy [S, 1]."""
    c = np.arange(image_size) + 0.5
    return (c - x * image_size)[None, :], (c - y * image_size)[:, None]


def test_examples_are_deterministic_and_seeded():
    a, b = make_source(seed=3), make_source(seed=3)
    for i in (0, 1, 999_999):
        ra, rb = a[i], b[i]
        assert set(ra) == {"image", "depth", "caption", "label", "shape_label", "color_label", "id"}
        assert ra["image"].dtype == np.uint8 and ra["image"].shape == (16, 16, 3)
        assert ra["depth"].dtype == np.float32 and ra["depth"].shape == (16, 16)
        assert ra["id"] == i
        np.testing.assert_array_equal(ra["image"], rb["image"])
        np.testing.assert_array_equal(ra["depth"], rb["depth"])
        assert ra["caption"] == rb["caption"] and ra["label"] == rb["label"]
    other = make_source(seed=4)
    assert [a[i]["caption"] for i in range(20)] != [other[i]["caption"] for i in range(20)]
    assert len(a) == 1_000_000 and len(make_source("test")) == 2048
    assert len(make_source(train_examples=10)) == 10
    with pytest.raises(IndexError):
        make_source(train_examples=10)[10]


def test_centred_large_red_square_geometry_and_depth():
    size = 32
    square = obj("square", "red", depth=0.3)
    image, depth = shapes.render([square], size)
    half = shapes.RADIUS[1] * size * math.sqrt(math.pi) / 2  # equal-area half side
    dx, dy = pixel_offsets(size)
    dist = np.maximum(np.abs(dx), np.abs(dy))
    red, bg = shapes.RGB[shapes.COLORS.index("red")], shapes.BACKGROUND_RGB
    assert tuple(image[size // 2, size // 2]) == tuple(red.astype(np.uint8))
    assert image[size // 2, size // 2, 0] > 200 and image[size // 2, size // 2, 1:].max() < 60
    inside, outside = dist <= half - 0.5, dist >= half + 0.5
    assert inside.sum() >= 36 and outside.sum() >= 500
    assert np.all(image[inside] == red) and np.all(image[outside] == bg)
    # Depth: object where the pixel is at least half covered, background elsewhere.
    np.testing.assert_array_equal(depth, np.where(dist <= half, np.float32(0.3), 1.0))


@pytest.mark.parametrize(
    "image_size, tol, mask_tol", [(32, 0.03, 0.15), (64, 0.015, 0.1), (224, 0.006, 0.03)]
)
@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_shape_has_the_area_of_its_circle_at_any_resolution(shape, image_size, tol, mask_tol):
    image, depth = shapes.render([obj(shape, "blue")], image_size)
    blue, bg = shapes.RGB[shapes.COLORS.index("blue")], shapes.BACKGROUND_RGB
    coverage = (image[..., 2].astype(np.float64) - bg[2]) / (blue[2] - bg[2])
    expected = math.pi * (shapes.RADIUS[1] * image_size) ** 2
    assert coverage.sum() == pytest.approx(expected, rel=tol)
    assert (depth < 1).sum() == pytest.approx(expected, rel=mask_tol)


def test_shapes_are_told_apart_by_their_masks():
    size = 64
    masks = {s: shapes.render([obj(s, "green")], size)[1] < 1 for s in shapes.SHAPES}
    dx, dy = pixel_offsets(size)
    r = shapes.RADIUS[1] * size
    np.testing.assert_array_equal(masks["circle"], dx**2 + dy**2 <= r**2)
    np.testing.assert_array_equal(
        masks["diamond"], np.abs(dx) + np.abs(dy) <= r * math.sqrt(math.pi / 2)
    )
    rows = masks["triangle"].sum(axis=1)
    rows = rows[rows > 0]
    assert rows[0] < rows[-1] and np.all(np.diff(rows) >= 0)  # apex up, widening downwards


def test_nearer_object_occludes_regardless_of_order():
    size = 32
    near, far = obj("circle", "red", depth=0.3), obj("square", "blue", depth=0.7)
    dx, dy = pixel_offsets(size)
    r = shapes.RADIUS[1] * size
    in_circle = dx**2 + dy**2 <= r**2
    in_square = np.maximum(np.abs(dx), np.abs(dy)) <= r * math.sqrt(math.pi) / 2
    corners = in_square & ~in_circle  # where the far square sticks out of the circle
    assert corners.sum() >= 4
    for scene in ([near, far], [far, near]):
        image, depth = shapes.render(scene, size)
        np.testing.assert_array_equal(depth[in_circle], np.float32(0.3))
        np.testing.assert_array_equal(depth[corners], np.float32(0.7))
        assert tuple(image[16, 16]) == tuple(shapes.RGB[0].astype(np.uint8))


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_objects_stay_inside_the_image(shape):
    """A large object in a corner cell, jittered outwards, loses no area to the border."""
    size, edge = 64, shapes.GRID[0] - shapes.JITTER

    def coverage(x, y):
        image = shapes.render([obj(shape, "red", x=x, y=y)], size)[0].astype(np.float64)
        red, bg = shapes.RGB[shapes.COLORS.index("red")], shapes.BACKGROUND_RGB
        return ((image[..., 0] - bg[0]) / (red[0] - bg[0])).sum()

    centred = coverage(0.5, 0.5)
    for xy in (edge, 1 - edge):
        assert coverage(xy, xy) == pytest.approx(centred, rel=0.01)


def test_caption_format():
    scene = [
        obj("circle", "red", "small", "top left"),
        obj("square", "blue", "large", "bottom right"),
    ]
    assert shapes.caption(scene[:1]) == "a small red circle in the top left"
    assert shapes.caption(scene) == (
        "a small red circle in the top left and a large blue square in the bottom right"
    )
    three = [*scene, obj("triangle", "green", "small", "top")]
    assert shapes.caption(three) == (
        "a small red circle in the top left, a large blue square in the bottom right "
        "and a small green triangle at the top"
    )


OBJECT = (
    rf"a ({'|'.join(shapes.SIZES)}) ({'|'.join(shapes.COLORS)}) ({'|'.join(shapes.SHAPES)}) "
    r"(?:in the |at the |on the )"
    r"(top left|top right|bottom left|bottom right|top|bottom|left|right|center)"
)
OBJECT_RE = re.compile(OBJECT)
CAPTION_RE = re.compile(rf"{OBJECT}(?:(?:, | and ){OBJECT})*")


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_agree_with_labels_and_scenes(split):
    src = make_source(split, image_size=8, min_objects=1, max_objects=3)
    names = shapes.classnames("shape_color")
    counts = set()
    for i in range(150):
        ex, scene = src[i], src.scene(i)
        found = OBJECT_RE.findall(ex["caption"])
        assert CAPTION_RE.fullmatch(ex["caption"]) and len(found) == len(scene)
        size, color, shape, position = found[0]
        assert names[ex["label"]] == f"{color} {shape}"
        assert shapes.classnames("shape")[ex["shape_label"]] == shape
        assert shapes.classnames("color")[ex["color_label"]] == color
        assert [
            (
                shapes.SIZES[o.size],
                shapes.COLORS[o.color],
                shapes.SHAPES[o.shape],
                shapes.POSITIONS[o.position],
            )
            for o in scene
        ] == found
        assert len({o.position for o in scene}) == len(scene)  # distinct cells
        counts.add(len(scene))
    assert counts == {1, 2, 3}


def test_splits_never_share_a_scene_and_share_every_class():
    keys, labels = {}, {}
    for split, n in (("train", 1500), ("test", 600)):
        src = make_source(split, image_size=4)
        keys[split] = {shapes.scene_key(src.scene(i)) for i in range(n)}
        labels[split] = {src[i]["label"] for i in range(n)}
    assert not keys["train"] & keys["test"]
    num_classes = len(shapes.classnames())
    assert labels["train"] == labels["test"] == set(range(num_classes))
    # Each class holds round(0.2 * 18) = 4 of its 18 single-object scenes out for test;
    # the sampled scenes follow that table.
    table = np.array(
        [
            [
                [
                    [
                        shapes.is_test_scene(((s, c, z, p),), 0.2)
                        for p in range(len(shapes.POSITIONS))
                    ]
                    for z in range(len(shapes.SIZES))
                ]
                for c in range(len(shapes.COLORS))
            ]
            for s in range(len(shapes.SHAPES))
        ]
    )
    assert np.all(table.sum(axis=(2, 3)) == 4)
    for split, want in (("train", False), ("test", True)):
        assert all(table[key[0]] == want for key in keys[split])


def test_multi_object_splits_are_disjoint_and_order_free():
    keys = {}
    for split in ("train", "test"):
        src = make_source(split, image_size=4, min_objects=2, max_objects=2)
        keys[split] = {shapes.scene_key(src.scene(i)) for i in range(400)}
    assert not keys["train"] & keys["test"]
    a, b = obj("circle", "red", position="top"), obj("square", "blue", position="left")
    assert shapes.scene_key([a, b]) == shapes.scene_key([b, a])


def test_classnames_and_templates():
    names = shapes.classnames()
    assert len(names) == len(shapes.SHAPES) * len(shapes.COLORS) == len(set(names))
    assert (
        names[shapes.shape_color_label(shapes.SHAPES.index("circle"), shapes.COLORS.index("red"))]
        == "red circle"
    )
    assert shapes.classnames("shape") == list(shapes.SHAPES)
    assert shapes.classnames("color") == list(shapes.COLORS)
    with pytest.raises(ValueError, match=r"kind: 'size' is not one of"):
        shapes.classnames("size")
    templates = make_source().templates
    assert all(template.count("{}") == 1 for template in templates)
    # The ensemble is neutral: every size and every position phrase equally often.
    for vocabulary in (shapes.SIZES, shapes.PHRASES):
        counts = {w: sum(f" {w} " in f" {t} " for t in templates) for w in vocabulary}
        assert len(set(counts.values())) == 1 and min(counts.values()) > 0, counts


def test_get_source_specs_and_options():
    kw = {"image_size": 8, "seed": 1}
    train = sources.get_source("generated:shapes", default_split="train", **kw)
    test = sources.get_source("generated:shapes", default_split="test", **kw)
    explicit = sources.get_source(
        "generated:shapes:test",
        default_split="train",
        source_kwargs={"shapes": {"test_examples": 5, "max_objects": 2}},
        **kw,
    )
    assert (train.split, test.split, explicit.split, len(explicit)) == ("train", "test", "test", 5)
    assert isinstance(train, sources.Source)
    assert train.classnames == shapes.classnames() and train.templates
    assert repr(explicit) == repr(
        sources.get_source(
            "generated:shapes:test",
            default_split="x",
            source_kwargs={"shapes": {"max_objects": 2, "test_examples": 5}},
            **kw,
        )
    )


@pytest.mark.parametrize(
    "spec, options, match",
    [
        (
            "parquet:/x",
            None,
            r"unknown prefix 'parquet'; known prefixes: \['csv', 'generated', 'tfds', 'wds'\]",
        ),
        ("generated:circles", None, r"unknown generated dataset 'circles'; known: \['shapes'\]"),
        ("generated:shapes:val", None, r"split: 'val' is not one of \['train', 'test'\]"),
        ("generated:shapes:test:x", None, r"expected 'generated:shapes\[:SPLIT\]'"),
        (
            "generated:shapes",
            {"shapes": {"max_objs": 2}},
            r"'max_objs' \(config data\.shapes\.max_objs\)",
        ),
        (
            "generated:shapes",
            {"shapes": {"min_objects": 3, "max_objects": 2}},
            r"min_objects, max_objects",
        ),
        ("generated:shapes", {"shapes": {"max_objects": 10}}, r"max_objects"),
        (
            "generated:shapes",
            {"shapes": {"test_fraction": 1.0}},
            r"test_fraction: must be in \(0, 1\)",
        ),
        (
            "generated:shapes",
            {"shapes": {"train_examples": 0}},
            r"train_examples: must be an int >= 1",
        ),
    ],
)
def test_get_source_errors_name_the_problem(spec, options, match):
    with pytest.raises(ValueError, match=match):
        sources.get_source(spec, image_size=8, seed=0, default_split="train", source_kwargs=options)
