"""The built-in ``generated:shapes`` dataset: seeded scenes of coloured shapes.

A scene is one or more objects, each a (shape, colour, size, grid position) with a
small continuous jitter of its centre, a brightness shade and a depth. It renders to
an anti-aliased RGB image (signed-distance coverage, so it looks the same at 32, 64
or 224 px), an aligned depth map (nearer objects occlude farther ones; background =
``BACKGROUND_DEPTH``) and a compositional caption such as
"a small red circle in the top left and a large blue square in the bottom right".

Splits never share a scene: each *discrete* scene description (the sorted tuple of
per-object (shape, colour, size, position) indices) belongs to exactly one split by a
stable hash (see :func:`is_test_scene`), and each split is sampled by rejection.
Example ``i`` of a split is a pure function of ``(seed, split, i)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.fields import FieldRequest

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
RGB = np.array(  # [len(COLORS), 3] in the order of COLORS
    [(225, 40, 40), (245, 140, 30), (235, 215, 40), (40, 175, 65), (45, 90, 230), (155, 65, 210)],
    np.float32,
)
SIZES = ("small", "large")
RADIUS = (0.11, 0.17)  # per size: radius of the equal-area circle, fraction of the image side
POSITIONS = (  # a 3x3 grid, row-major
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
PHRASES = (  # caption phrase per position
    "in the top left",
    "at the top",
    "in the top right",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left",
    "at the bottom",
    "in the bottom right",
)
GRID = (0.26, 0.5, 0.74)  # centre coordinates of the grid cells, fraction of the image side
JITTER = 0.03  # max offset of an object centre from its cell centre, fraction of the side
SHADE = (0.8, 1.0)  # range of the brightness factor applied to an object's colour
DEPTH_RANGE = (0.2, 0.8)  # range of object depths (smaller = nearer)
BACKGROUND_DEPTH = 1.0
BACKGROUND_RGB = np.array((50, 50, 50), np.float32)
SPLITS = ("train", "test")
# Zero-shot prompts: the caption grammar with every size and position, so the class
# embedding (the mean over templates) is in the captions' distribution and neutral in
# size and position (prompt ensembling as in CLIP).
TEMPLATES = tuple(f"a {size} {{}} {phrase}" for size in SIZES for phrase in PHRASES)
CLASS_KINDS = ("shape_color", "shape", "color")
# Label field (an eval's label_key) -> class kind, and prompts neutral in the other
# attributes (every colour for shapes, every shape for colours).
LABEL_KINDS = {"label": "shape_color", "shape_label": "shape", "color_label": "color"}
KIND_TEMPLATES = {
    "shape_color": TEMPLATES,
    "shape": tuple(f"a {size} {color} {{}} {p}" for size in SIZES for color in COLORS
                   for p in PHRASES),
    "color": tuple(f"a {size} {{}} {shape} {p}" for size in SIZES for shape in SHAPES
                   for p in PHRASES),
}
_MAX_ATTEMPTS = 10_000  # rejection-sampling attempts before giving up on a split


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object of a scene; indices into SHAPES, COLORS, SIZES, POSITIONS.

    ``x``, ``y``: centre as a fraction of the image side (x right, y down);
    ``depth`` in DEPTH_RANGE; ``shade``: brightness factor in SHADE.
    """

    shape: int
    color: int
    size: int
    position: int
    x: float
    y: float
    depth: float
    shade: float

    @property
    def description(self) -> tuple[int, int, int, int]:
        return (self.shape, self.color, self.size, self.position)


def classnames(kind: str = "shape_color") -> list[str]:
    """Class names in label order: "shape_color" ("red circle", label = shape *
    len(COLORS) + colour), "shape" ("circle") or "color" ("red")."""
    if kind == "shape_color":
        return [f"{c} {s}" for s in SHAPES for c in COLORS]
    if kind == "shape":
        return list(SHAPES)
    if kind == "color":
        return list(COLORS)
    raise ValueError(f"kind: {kind!r} is not one of {list(CLASS_KINDS)}")


def shape_color_label(shape: int, color: int) -> int:
    return shape * len(COLORS) + color


def caption(scene: Sequence[SceneObject]) -> str:
    """The caption, e.g. "a small red circle in the top left"; several objects are
    joined by ", " with a final " and ", in scene order."""
    parts = [
        f"a {SIZES[o.size]} {COLORS[o.color]} {SHAPES[o.shape]} {PHRASES[o.position]}"
        for o in scene
    ]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ------------------------------------------------------------------------- splits


def scene_key(scene: Sequence[SceneObject]) -> tuple[tuple[int, int, int, int], ...]:
    """The discrete description that decides the split: sorted (shape, colour, size,
    position) tuples, independent of caption order, jitter, shade and depth."""
    return tuple(sorted(o.description for o in scene))


def _unit_hash(key: tuple) -> float:
    """A stable (process- and platform-independent) hash of ``key`` in [0, 1)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


@functools.lru_cache(maxsize=16)
def _single_object_test_table(test_fraction: float) -> np.ndarray:
    """bool [shapes, colours, sizes, positions]: single-object descriptions in "test".

    Stratified per shape+colour class: of its sizes x positions combinations, the
    round(test_fraction * n) (at least 1, at most n - 1) with the smallest hash are
    test, so every class appears in both splits.
    """
    n = len(SIZES) * len(POSITIONS)
    num_test = min(max(round(test_fraction * n), 1), n - 1)
    table = np.zeros((len(SHAPES), len(COLORS), len(SIZES), len(POSITIONS)), bool)
    for shape in range(len(SHAPES)):
        for color in range(len(COLORS)):
            combos = [(size, pos) for size in range(len(SIZES)) for pos in range(len(POSITIONS))]
            combos.sort(key=lambda sp: _unit_hash(((shape, color, *sp),)))
            for size, pos in combos[:num_test]:
                table[shape, color, size, pos] = True
    return table


def is_test_scene(key: tuple[tuple[int, int, int, int], ...], test_fraction: float) -> bool:
    """Whether the scene with description ``key`` (see :func:`scene_key`) is a test scene.

    Single-object scenes: stratified per shape+colour class (every class has both train
    and test scenes). Multi-object scenes: ``hash(key) < test_fraction``.
    """
    if len(key) == 1:
        return bool(_single_object_test_table(test_fraction)[key[0]])
    return _unit_hash(key) < test_fraction


# ----------------------------------------------------------------------- sampling


def sample_scene(
    rng: np.random.Generator,
    *,
    split: str,
    min_objects: int = 1,
    max_objects: int = 1,
    test_fraction: float = 0.2,
) -> tuple[SceneObject, ...]:
    """A random scene of ``split`` with ``min_objects..max_objects`` objects (uniform),
    each at a distinct grid position; attributes uniform, then rejected until the
    scene's description belongs to ``split``."""
    want_test = split == "test"
    k = min_objects + int(rng.random() * (max_objects - min_objects + 1))
    for _ in range(_MAX_ATTEMPTS):
        u = rng.random((k, 7)).tolist()
        positions = np.argsort(rng.random(len(POSITIONS)))[:k].tolist()
        descriptions = [
            (int(row[0] * len(SHAPES)), int(row[1] * len(COLORS)), int(row[2] * len(SIZES)), pos)
            for row, pos in zip(u, positions, strict=True)
        ]
        if is_test_scene(tuple(sorted(descriptions)), test_fraction) != want_test:
            continue
        return tuple(
            SceneObject(
                *description,
                x=GRID[pos % 3] + JITTER * (2 * row[3] - 1),
                y=GRID[pos // 3] + JITTER * (2 * row[4] - 1),
                depth=DEPTH_RANGE[0] + (DEPTH_RANGE[1] - DEPTH_RANGE[0]) * row[5],
                shade=SHADE[0] + (SHADE[1] - SHADE[0]) * row[6],
            )
            for description, row, pos in zip(descriptions, u, positions, strict=True)
        )
    raise RuntimeError(
        f"no {split!r} scene with {k} objects after {_MAX_ATTEMPTS} attempts "
        f"(test_fraction={test_fraction})"
    )


# ---------------------------------------------------------------------- rendering

# Shape dimensions per unit radius, chosen so every shape has the area of its circle
# (pi * radius^2): half side of the square, half diagonal of the diamond, side of the
# equilateral triangle.
_SQUARE_HALF = math.sqrt(math.pi) / 2
_DIAMOND_HALF = math.sqrt(math.pi / 2)
_TRIANGLE_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))
_EXTENT = {
    "circle": 1.0,
    "square": _SQUARE_HALF,
    "triangle": _TRIANGLE_SIDE / 2,
    "diamond": _DIAMOND_HALF,
}  # half-width of a box around the centre holding it


def half_extent(name: str, radius: float) -> tuple[float, float]:
    """Half width and half height of the bounding box of shape ``name`` whose equal-area
    circle has ``radius`` (any unit; the triangle is centred on its bounding box)."""
    if name == "triangle":
        side = radius * _TRIANGLE_SIDE
        return side / 2, side * math.sqrt(3) / 4
    return _EXTENT[name] * radius, _EXTENT[name] * radius


def _signed_distance(name: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (negative inside) from offsets ``dx`` [1, w], ``dy`` [h, 1] to the
    outline of shape ``name`` of area pi * radius^2 centred at 0 -> [h, w]. Polygons use
    the max over their edges' half-planes (exact on and inside the outline)."""
    if name == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if name == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - radius * _SQUARE_HALF
    if name == "diamond":
        return (np.abs(dx) + np.abs(dy) - radius * _DIAMOND_HALF) / math.sqrt(2)
    if name == "triangle":  # equilateral, pointing up, centred on its bounding box
        half_height = radius * _TRIANGLE_SIDE * math.sqrt(3) / 4
        slanted = math.sqrt(3) / 2 * np.abs(dx) - 0.5 * (dy + half_height)
        return np.maximum(dy - half_height, slanted)
    raise ValueError(f"shape: {name!r} is not one of {list(SHAPES)}")


@functools.lru_cache(maxsize=8)
def _canvas(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(background image f32 [S, S, 3], pixel-centre coordinates f32 [S]); read-only."""
    background = np.empty((image_size, image_size, 3), np.float32)
    background[:] = BACKGROUND_RGB
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    background.flags.writeable = coords.flags.writeable = False
    return background, coords


def coverage(
    obj: SceneObject, image_size: int
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """``obj``'s box of pixels and its coverage ``0.5 - sd`` there (sd: signed distance to
    the outline in pixels; f32 [h, w], not yet clipped), or None when the box is empty.
    The one place :func:`render` and the segmentation masks compute it."""
    _, coords = _canvas(image_size)
    radius = RADIUS[obj.size] * image_size
    cx, cy = obj.x * image_size, obj.y * image_size
    name = SHAPES[obj.shape]
    reach = _EXTENT[name] * radius + 1.0
    x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)), image_size)
    y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)), image_size)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (coords[x0:x1] - cx)[None, :]
    dy = (coords[y0:y1] - cy)[:, None]
    return (slice(y0, y1), slice(x0, x1)), 0.5 - _signed_distance(name, dx, dy, radius)


def render(scene: Sequence[SceneObject], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders ``scene`` -> (image: uint8 [S, S, 3], depth: float32 [S, S]).

    Objects are composited far to near with anti-aliased coverage clip(0.5 - sd, 0, 1)
    (sd = signed distance in pixels); a pixel's depth is that of the nearest object
    covering at least half of it, else BACKGROUND_DEPTH.
    """
    background, _ = _canvas(image_size)
    image = background.copy()
    depth = np.full((image_size, image_size), BACKGROUND_DEPTH, np.float32)
    for obj in sorted(scene, key=lambda o: -o.depth):
        covered = coverage(obj, image_size)
        if covered is None:
            continue
        box, cover = covered
        np.minimum(np.maximum(cover, 0.0, out=cover), 1.0, out=cover)
        region = image[box]
        region += cover[..., None] * (RGB[obj.color] * obj.shade - region)
        depth[box][cover >= 0.5] = obj.depth
    return np.rint(image).astype(np.uint8), depth


# ---------------------------------------------------------------------- the source


@dataclasses.dataclass(frozen=True)
class ShapesOptions:
    """Options of ``generated:shapes`` (the trainer's ``config.data.shapes``).

    min_objects, max_objects: objects per scene, uniform in [min, max] (1..9).
    train_examples, test_examples: virtual length of each split.
    test_fraction: share of discrete scene descriptions held out for "test", in (0, 1).
    audio_sample_rate, audio_seconds: the ``audio`` field's clip (synthesised only when a
      pipeline asks for it; :mod:`.shapes_audio`).
    """

    min_objects: int = 1
    max_objects: int = 1
    train_examples: int = 1_000_000
    test_examples: int = 2048
    test_fraction: float = 0.2
    audio_sample_rate: int = 16_000
    audio_seconds: float = 1.0

    def __post_init__(self):
        for name in (
            "min_objects",
            "max_objects",
            "train_examples",
            "test_examples",
            "audio_sample_rate",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"generated:shapes option {name}: must be an int >= 1, got {value!r}"
                )
        if not self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ValueError(
                f"generated:shapes options min_objects, max_objects: need 1 <= min <= max <= "
                f"{len(POSITIONS)}, got {self.min_objects}, {self.max_objects}"
            )
        if not isinstance(self.audio_seconds, float | int) or not self.audio_seconds > 0:
            raise ValueError(
                f"generated:shapes option audio_seconds: must be > 0, got {self.audio_seconds!r}"
            )
        if not isinstance(self.test_fraction, float | int) or not 0 < self.test_fraction < 1:
            raise ValueError(
                f"generated:shapes option test_fraction: must be in (0, 1), "
                f"got {self.test_fraction!r}"
            )


class ShapesSource:
    """``generated:shapes`` split as a grain RandomAccessDataSource.

    ``source[i]`` (0 <= i < len) is a dict: image uint8 [S, S, 3], depth float32
    [S, S], caption str, label int (shape+colour class of the first-mentioned object),
    shape_label int, color_label int, id int (= i). Deterministic in (seed, split, i).
    With field ``requests`` (:mod:`.fields`) the record holds ``record[r.key]`` for each
    request instead of image/depth/caption; fields: ``image``, ``depth``, ``caption``
    (also the default of key ``text``), ``audio`` (f32 [T] waveform at
    ``options.audio_sample_rate``, synthesised only when requested), ``locca`` (the
    caption and every object's name and box, :func:`.locca_tasks.shapes_field`) and
    ``segmentation`` (int32 [S, S] object-class mask, 0 = background; :mod:`.shapes_masks`).
    Attributes ``classnames`` (label order) and ``templates`` serve the zero-shot eval;
    ``label_key`` (an eval's): ``label`` (shape+colour, default), ``shape_label`` or
    ``color_label`` becomes the record's ``label``, with that kind's class names and
    prompts neutral in the other attribute.
    """

    FIELDS = ("image", "depth", "caption", "audio", "locca", "segmentation")

    def __init__(
        self,
        *,
        split: str,
        image_size: int,
        seed: int,
        options: ShapesOptions,
        requests: Sequence[FieldRequest] | None = None,
        label_key: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"generated:shapes split: {split!r} is not one of {list(SPLITS)}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size: must be an int >= 1, got {image_size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be an int >= 0, got {seed!r}")
        self.split = split
        self.image_size = image_size
        self.seed = seed
        self.options = options
        self.label_key = label_key or "label"
        if self.label_key not in LABEL_KINDS:
            raise ValueError(
                f"generated:shapes label_key: {label_key!r} is not one of {list(LABEL_KINDS)}"
            )
        kind = LABEL_KINDS[self.label_key]
        self.classnames = classnames(kind)
        self.templates = list(KIND_TEMPLATES[kind])
        self._length = options.train_examples if split == "train" else options.test_examples
        self._split_id = SPLITS.index(split)
        self.requests = tuple(requests) if requests is not None else None
        self._names = {r.key: self._field_name(r) for r in self.requests or ()}
        self.provides = frozenset(
            ("image", "depth", "caption")
            if self.requests is None
            else (k for k, n in self._names.items() if n in self.FIELDS)
        )
        self.available_fields = list(self.FIELDS)

    @staticmethod
    def _field_name(request: FieldRequest) -> str:
        if request.name is not None:
            return request.name
        return "caption" if request.key == "text" else request.key

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        scene = self.scene(index)
        first = scene[0]
        record = {
            "label": shape_color_label(first.shape, first.color),
            "shape_label": first.shape,
            "color_label": first.color,
            "id": index,
        }
        record["label"] = record[self.label_key]
        if self.requests is None:
            image, depth = render(scene, self.image_size)
            return {"image": image, "depth": depth, "caption": caption(scene), **record}
        names = {n for k, n in self._names.items() if k in self.provides}
        fields: dict[str, Any] = {}
        if names & {"image", "depth"}:
            fields["image"], fields["depth"] = render(scene, self.image_size)
        if "caption" in names:
            fields["caption"] = caption(scene)
        if "locca" in names:  # LocCa's caption and object boxes (data/locca_tasks.py)
            from multimodal_ssl.data.locca_tasks import shapes_field

            fields["locca"] = shapes_field(scene)
        if "audio" in names:
            from multimodal_ssl.data import shapes_audio  # local: it imports this module

            o = self.options
            fields["audio"] = shapes_audio.synthesize(
                scene, sample_rate=o.audio_sample_rate, duration=o.audio_seconds
            )
        if "segmentation" in names:
            from multimodal_ssl.data import shapes_masks  # local: it imports this module

            fields["segmentation"] = shapes_masks.segmentation(scene, self.image_size)
        record.update({k: fields[n] for k, n in self._names.items() if k in self.provides})
        return record

    def scene(self, index: int) -> tuple[SceneObject, ...]:
        """The scene behind ``self[index]``: sampled with
        ``default_rng((seed, split index, index))``."""
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self!r}")
        rng = np.random.default_rng((self.seed, self._split_id, index))
        o = self.options
        return sample_scene(
            rng,
            split=self.split,
            min_objects=o.min_objects,
            max_objects=o.max_objects,
            test_fraction=o.test_fraction,
        )

    def __repr__(self) -> str:  # stable: grain checks it when restoring iterator state
        fields = "" if self.requests is None else f", fields={self._names}"
        fields += "" if self.label_key == "label" else f", label_key={self.label_key!r}"
        return (
            f"ShapesSource(split={self.split!r}, image_size={self.image_size}, "
            f"seed={self.seed}, options={self.options!r}{fields})"
        )
