"""A fake data layer for the evaluator tests: sources whose images hold their label in
every pixel, captions that name the class, and oracle embedders that read both."""

from __future__ import annotations

import types

import ml_collections
import numpy as np

from multimodal_ssl import evals
from multimodal_ssl.evals import common

CLASSES = ["red circle", "blue square", "green triangle", "red square"]
LABELS = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]  # the labels of every "fake:..." split
TRAIN_LABELS = [3, 2, 1, 0, 0, 1, 2, 3, 3]  # ... except those of a spec containing "train"


class FakeSource:
    classnames = CLASSES
    templates = ["a photo of a {}.", "a {}"]

    def __init__(self, labels=LABELS):
        self.labels = labels


class ClassTokenizer:
    """Captions/prompts -> [class index + 1, 0]: the model below reads the class off the
    tokens, like an oracle that understood the caption."""

    def encode(self, texts):
        rows = [[1 + next(i for i, c in enumerate(CLASSES) if c in t), 0] for t in texts]
        return np.array(rows, np.int32)


def fake_batches(labels, batch_size):
    """Images hold their label in every pixel; the caption names the class."""
    tok = ClassTokenizer()
    for start in range(0, len(labels), batch_size):
        lab = np.asarray(labels[start : start + batch_size], np.int32)
        yield {
            "image": np.broadcast_to(lab[:, None, None, None], (len(lab), 2, 2, 3)).astype(
                np.float32
            ),
            "text": tok.encode([f"a {CLASSES[i]} somewhere" for i in lab]),
            "label": lab,
            "id": np.arange(start, start + len(lab)),
        }


def oracle_images(images):
    return np.eye(len(CLASSES), dtype=np.float32)[images[:, 0, 0, 0].astype(int)]


def oracle_texts(tokens):
    return np.eye(len(CLASSES), dtype=np.float32)[tokens[:, 0] - 1]  # pad rows hit -1: fine


def fake_processors() -> dict:
    """Stand-ins for the image and text processors (only ``kind``, ``tokenizer`` and
    ``request`` are read by the evaluators)."""
    return {
        m: types.SimpleNamespace(kind=m, tokenizer=ClassTokenizer(), request=m)
        for m in ("image", "text")
    }


def install_fake_data(monkeypatch) -> dict:
    """Replaces the data module with FakeSource / fake_batches; returns the recorded
    calls {"source": [(spec, image_size, seed, requests)], "batches": [(batch_size,
    modalities, max)]}."""
    calls = {"source": [], "batches": []}

    def open_source(spec, *, image_size, seed, source_kwargs):
        calls["source"].append((spec, image_size, seed, source_kwargs.requests))
        return FakeSource(TRAIN_LABELS if "train" in spec else LABELS)

    def make_batches(source, *, batch_size, processors, max_examples, options):
        calls["batches"].append((batch_size, tuple(processors), max_examples))
        return fake_batches(source.labels[:max_examples], batch_size)

    monkeypatch.setattr(common, "open_eval_source", open_source)
    monkeypatch.setattr(common, "make_batches", make_batches)
    return calls


def build(type_name, **cfg):
    """An evaluator of ``type_name`` named "ev" on "fake:test" with ``cfg`` overrides."""
    cfg = ml_collections.ConfigDict({"type": type_name, "data": "fake:test", **cfg})
    return evals.get_evaluator(type_name)(
        "ev", cfg, processors=fake_processors(), image_size=2, seed=0
    )
