"""The ``locca`` evaluator: what SigLIP 2's decoder learned, by greedy decoding on held-out
data with boxes (``generated:shapes:test``), one row per example and task, on the
example's first object:

* ``caption_exact`` (the generated caption equals the reference) and
  ``caption_token_acc`` (reference tokens, EOS included, matched at their position);
* ``referring_acc`` (the predicted box of the named object has IoU >= 0.5 with the true
  one; a malformed box counts as wrong) and ``referring_iou`` (mean IoU);
* ``grounded_exact`` / ``grounded_token_acc``: the name of the object in the given box.

Needs ``config.decoder`` on (the embedder then hands it a ``locca`` captioner; without
it the eval logs that it is skipped and reports only ``eval/<name>/skipped = 1``, so one
recipe serves the decoder-less arms of an ablation); the
decoder's tasks, prefixes and box format are those of ``data/locca_tasks.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import ml_collections
import numpy as np

from multimodal_ssl.data import locca_tasks
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.modalities import Processor
from multimodal_ssl.evals import common

IOU_THRESHOLD = 0.5


class _FieldReader(Processor):
    """Reads the locca field as checked JSON text (batch entry: object array [b])."""

    kind = "locca"

    @property
    def request(self) -> FieldRequest:
        return FieldRequest(self.modality, self.name, binary=False)

    def read(self, value, where, rng):
        return json.dumps(locca_tasks.parse_field(value, where))

    def absent(self) -> str:
        return json.dumps({"caption": "", "objects": []})

    def example_shape(self):
        return (), np.dtype(object)

    def collate(self, values):
        return np.array(values, dtype=object)


def token_accuracy(tokenizer: Any, predicted: Sequence[str], reference: Sequence[str]) -> float:
    """Fraction of reference tokens (plus one end token) predicted at their position."""
    hits = total = 0
    for p, r in zip(predicted, reference, strict=True):
        pi, ri = tokenizer._ids(p) + [-1], tokenizer._ids(r) + [-1]  # noqa: SLF001
        hits += sum(a == b for a, b in zip(pi, ri, strict=False))
        total += len(ri)
    return hits / max(total, 1)


class LoccaEvaluator(common.Evaluator):
    """``evals.<name>`` of type ``locca`` (module doc). ``query``: the decoder's image
    modality; ``field``: the record field with caption and boxes."""

    TYPE: ClassVar[str] = "locca"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.field = "locca"
        cfg.max_examples = 256
        cfg.batch_size = 128
        return cfg

    def open_data(self, spec: str, max_examples: int | None) -> common.EvalData:
        image = self.config["query"]
        reader = _FieldReader("locca", self.config["field"])
        processors = {image: self.processors[image], "locca": reader}
        saved, self.processors = self.processors, processors
        try:
            return super().open_data(spec, max_examples)
        finally:
            self.processors = saved

    @property
    def modalities(self) -> list[str]:
        return [self.config["query"], "locca"]

    def run(self, embed: common.EmbedFns) -> dict[str, float]:
        return self.compute(embed)  # no embedding prefixes: decoding is not an embedding

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        captioner = embed.get("locca")
        if captioner is None:  # e.g. the decoder-less arms of an ablation sweep
            logging.warning(
                "eval %s: skipped, type 'locca' needs the decoder (config.decoder.weight > 0)",
                self.name,
            )
            return self._prefixed({"skipped": 1.0})
        bins, tok = captioner.box_bins, captioner.tokenizer
        refs = {t: [] for t in locca_tasks.TASKS}
        preds = {t: [] for t in locca_tasks.TASKS}
        boxes = []
        for batch in self.data.batches():
            fields = [json.loads(s) for s in batch["locca"]]
            keep = [i for i, f in enumerate(fields) if f["objects"]]
            images = np.asarray(batch[self.config["query"]])
            for task in locca_tasks.TASKS:
                rows = keep if task in locca_tasks.BOX_TASKS else range(len(fields))
                texts = [locca_tasks.task_texts(fields[i], task, 0, bins) for i in rows]
                if not texts:
                    continue
                longest = max(len(tok._ids(t)) for _, t in texts) + 1  # noqa: SLF001
                preds[task] += captioner(images[list(rows)], [p for p, _ in texts], longest)
                refs[task] += [t for _, t in texts]
                if task == "referring":
                    boxes += [fields[i]["objects"][0]["box"] for i in rows]
        out = {}
        if refs["caption"]:
            pairs = zip(preds["caption"], refs["caption"], strict=True)
            out["caption_exact"] = np.mean([p == r for p, r in pairs])
            out["caption_token_acc"] = token_accuracy(tok, preds["caption"], refs["caption"])
        if refs["referring"]:
            ious = [
                0.0 if (b := locca_tasks.parse_box(p, bins)) is None else
                float(locca_tasks.box_iou(b, np.asarray(t)))
                for p, t in zip(preds["referring"], boxes, strict=True)
            ]
            out["referring_acc"] = float(np.mean(np.asarray(ious) >= IOU_THRESHOLD))
            out["referring_iou"] = float(np.mean(ious))
            out["grounded_exact"] = np.mean(
                [p == r for p, r in zip(preds["grounded"], refs["grounded"], strict=True)]
            )
            out["grounded_token_acc"] = token_accuracy(tok, preds["grounded"], refs["grounded"])
        return self._prefixed(out)
