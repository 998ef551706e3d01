"""LocCa's decoder tasks (Wan et al. 2024, as used by SigLIP 2): one record field -> the
decoder's teacher-forcing rows.

The record field (``config.decoder.field``, default ``locca``) holds a dict (or its JSON
text, e.g. a CSV column or a WebDataset ``.json`` member)::

    {"caption": "a small red circle in the top left",
     "objects": [{"name": "small red circle", "box": [x0, y0, x1, y1]}, ...]}

with boxes in [0, 1] image coordinates (x right, y down). ``generated:shapes`` serves it
for every scene (:func:`shapes_field`). Tasks, as a prefix the decoder is given and a
target it predicts (LocCa's "Cap", "Ref" and "GCap"):

==========  =========================  ===========================
task        prefix                     target
==========  =========================  ===========================
caption     ``cap:``                   the caption
referring   ``ref: <name>:``           the box of that object
grounded    ``grd: <box>:``            the name of that object
==========  =========================  ===========================

A box is four coordinates quantised to ``bins`` levels, ``q = round(c * (bins - 1))``,
written as zero-padded numbers (``"03 10 12 19"`` for 32 bins), so any tokenizer reads
them (no special location tokens needed). Training draws one task per example (weights
``config.decoder.tasks``) and, for the box tasks, one object, from the example's
generator.

Decoder rows (length ``T``): ids ``[BOS] prefix target [EOS]`` shifted by one:
``inputs = ids[:-1]``, ``labels = ids[1:]``, ``weights`` 1 on the positions whose label
is a target token or EOS. BOS, EOS and MASK (parallel prediction's input) are ids past
the tokenizer's vocabulary (:func:`special_ids`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.modalities import Processor
from multimodal_ssl.data.records import BadRecord
from multimodal_ssl.data.tokenizers import Tokenizer

TASKS = ("caption", "referring", "grounded")
BOX_TASKS = ("referring", "grounded")
PREFIX = {"caption": "cap:", "referring": "ref: {}:", "grounded": "grd: {}:"}
KEYS = ("inputs", "labels", "weights", "valid", "parallel", "task")  # batch entries locca/<k>


def special_ids(vocab_size: int) -> dict[str, int]:
    """The decoder's own ids past the tokenizer's ``vocab_size``: BOS, EOS, MASK."""
    return {"bos": vocab_size, "eos": vocab_size + 1, "mask": vocab_size + 2}


def decoder_vocab_size(vocab_size: int) -> int:
    return vocab_size + len(special_ids(vocab_size))


# ----------------------------------------------------------------------------- boxes


def format_box(box: Sequence[float], bins: int) -> str:
    """[x0, y0, x1, y1] in [0, 1] -> ``"03 10 12 19"`` (``bins`` levels, zero-padded)."""
    digits = len(str(bins - 1))
    q = [min(bins - 1, max(0, round(float(c) * (bins - 1)))) for c in box]
    return " ".join(f"{v:0{digits}d}" for v in q)


def parse_box(text: str, bins: int) -> np.ndarray | None:
    """Inverse of :func:`format_box`: -> f32 [4] in [0, 1], or None when ``text`` is not
    four numbers in [0, bins) (a malformed prediction)."""
    parts = text.strip().split()
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    q = [int(p) for p in parts]
    if max(q) >= bins:
        return None
    return np.asarray(q, np.float32) / (bins - 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a``, ``b`` [..., 4] (x0, y0, x1, y1) -> [...]; 0 for empty unions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h

    def area(x):
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ---------------------------------------------------------------- the record field


def parse_field(value: Any, where: str) -> dict[str, Any]:
    """The field's dict (or JSON text) checked -> ``{"caption": str, "objects": [...]}``;
    BadRecord naming what is wrong."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRecord(where, f"locca field: not JSON ({e})") from None
    if not isinstance(value, Mapping):
        raise BadRecord(where, f"locca field: expected a dict, got {type(value).__name__}")
    caption = value.get("caption", "")
    objects = value.get("objects", [])
    if not isinstance(caption, str) or not isinstance(objects, list):
        raise BadRecord(where, "locca field: 'caption' must be a str and 'objects' a list")
    for i, o in enumerate(objects):
        box = o.get("box") if isinstance(o, Mapping) else None
        ok = isinstance(o, Mapping) and isinstance(o.get("name"), str) and box is not None
        ok = ok and len(box) == 4 and all(math.isfinite(float(c)) for c in box)
        if not ok:
            raise BadRecord(where, f"locca field: objects[{i}] needs a 'name' and a 4-number 'box'")
    return {"caption": caption, "objects": objects}


def shapes_field(scene: Sequence[Any]) -> dict[str, Any]:
    """``generated:shapes``' locca field of ``scene`` (its ``SceneObject``s): the caption
    and, per object, ``"<size> <colour> <shape>"`` and its exact bounding box."""
    from multimodal_ssl.data import shapes  # local: shapes imports this module's users

    objects = []
    for o in scene:
        half_w, half_h = shapes.half_extent(shapes.SHAPES[o.shape], shapes.RADIUS[o.size])
        box = [o.x - half_w, o.y - half_h, o.x + half_w, o.y + half_h]
        name = f"{shapes.SIZES[o.size]} {shapes.COLORS[o.color]} {shapes.SHAPES[o.shape]}"
        objects.append({"name": name, "box": [min(1.0, max(0.0, c)) for c in box]})
    return {"caption": shapes.caption(scene), "objects": objects}


def task_texts(field: Mapping[str, Any], task: str, index: int, bins: int) -> tuple[str, str]:
    """(prefix, target) of ``task`` on object ``index`` (ignored for captions)."""
    if task == "caption":
        return PREFIX[task], field["caption"]
    obj = field["objects"][index]
    if task == "referring":
        return PREFIX[task].format(obj["name"]), format_box(obj["box"], bins)
    return PREFIX[task].format(format_box(obj["box"], bins)), obj["name"]


def decoder_row(
    tokenizer: Tokenizer, prefix: str, target: str, length: int, where: str
) -> dict[str, np.ndarray]:
    """One teacher-forcing row (module doc): inputs, labels i32 [T], weights f32 [T],
    valid bool [T] (real input positions), prefix_len (ids of BOS + prefix)."""
    sp = special_ids(tokenizer.vocab_size)
    head = [sp["bos"], *tokenizer._ids(prefix)]  # noqa: SLF001 (unpadded ids)
    ids = [*head, *tokenizer._ids(target), sp["eos"]]  # noqa: SLF001
    if len(ids) - 1 > length:
        raise BadRecord(
            where,
            f"locca {prefix!r} + target of {len(ids) - 1} tokens exceeds "
            f"config.decoder.max_len {length}",
        )
    n = len(ids) - 1
    out = {
        "inputs": np.full(length, tokenizer.pad_id, np.int32),
        "labels": np.zeros(length, np.int32),
        "weights": np.zeros(length, np.float32),
        "valid": np.zeros(length, bool),
    }
    out["inputs"][:n] = ids[:-1]
    out["labels"][:n] = ids[1:]
    out["weights"][len(head) - 1 : n] = 1.0
    out["valid"][:n] = True
    out["prefix_len"] = np.int32(len(head))
    return out


class LoccaProcessor(Processor):
    """The training pipeline's reader of the locca field (JSON text or a dict). Batch entries
    ``locca/<k>`` for ``k`` in :data:`KEYS`: inputs, labels i32 [b, T], weights f32
    [b, T], valid bool [b, T], parallel bool [b], task i32 [b] (index into TASKS)."""

    kind = "locca"

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        field: str,
        max_len: int,
        task_weights: Mapping[str, float],
        parallel_fraction: float,
        box_bins: int,
    ):
        super().__init__("locca", field)
        self.tokenizer, self.max_len, self.bins = tokenizer, max_len, box_bins
        weights = np.array([float(task_weights.get(t, 0.0)) for t in TASKS])
        self.probs = weights / weights.sum()
        self.parallel_fraction = parallel_fraction

    @property
    def request(self) -> FieldRequest:
        return FieldRequest(self.modality, self.name, binary=False)

    def read(self, value: Any, where: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        field = parse_field(value, where)
        probs = self.probs
        if not field["objects"]:  # captions only
            probs = np.where(np.array(TASKS) == "caption", 1.0, 0.0)
        task = int(rng.choice(len(TASKS), p=probs))
        index = int(rng.integers(len(field["objects"]))) if TASKS[task] in BOX_TASKS else 0
        prefix, target = task_texts(field, TASKS[task], index, self.bins)
        row = decoder_row(self.tokenizer, prefix, target, self.max_len, where)
        del row["prefix_len"]
        row["parallel"] = np.bool_(rng.random() < self.parallel_fraction)
        row["task"] = np.int32(task)
        return row

    def absent(self) -> dict[str, np.ndarray]:
        """A row with no loss (weights 0), for examples of a source without the field."""
        t = self.max_len
        return {
            "inputs": np.zeros(t, np.int32), "labels": np.zeros(t, np.int32),
            "weights": np.zeros(t, np.float32), "valid": np.zeros(t, bool),
            "parallel": np.bool_(False), "task": np.int32(0),
        }

    def example_shape(self) -> tuple[tuple[int, ...], np.dtype]:
        return (self.max_len,), np.dtype(np.int32)

    def collate(self, values: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {f"locca/{k}": np.stack([v[k] for v in values]) for k in KEYS}

    def finish_into(self, batch: dict[str, np.ndarray]) -> None:
        return None

    def fingerprint(self) -> str:
        return (
            f"locca:{self.name}:T={self.max_len}:bins={self.bins}:p={self.probs.tolist()}"
            f":parallel={self.parallel_fraction}"
        )
