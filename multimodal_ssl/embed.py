"""Embedding export: the embeddings of any modality of a data source as ``.npy`` files.

    python -m multimodal_ssl.embed --config=configs/siglip.py --checkpoint=WORKDIR \
        --data=generated:shapes:test --output=DIR [--max_examples=N] [--modalities=image,text]
    python -m multimodal_ssl.embed --config=... --pretrained=PATH --data=... --output=DIR

Writes to ``DIR``:

* ``ids.npy``: i64 [N], the source index (``id``) of each row;
* ``<modality>_embeddings.npy`` (``image_embeddings.npy``, ``text_embeddings.npy``,
  ``audio_embeddings.npy``, ...): f32 [N, d], L2-normalised, row i that modality of
  example ``ids[i]`` (one file per ``--modalities`` entry, any tower of the model);
* ``meta.json``: source spec, model (checkpoint or pretrained path, step), N, d.

The examples are read in source order with the eval preprocessing (as the evals see
them); rows stream to disk, so N is bounded by disk, not memory. Model loading is that
of ``multimodal_ssl.evaluate`` (``--checkpoint`` / ``--step`` / ``--pretrained``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from multimodal_ssl.data.modalities import make_processors
from multimodal_ssl.data.sources import DataOptions
from multimodal_ssl.evals import common
from multimodal_ssl.evaluate import Encoder, define_model_flags, encoder_from_flags


def embeddings_file(modality: str) -> str:
    """The file name of ``modality``'s embeddings: ``<modality>_embeddings.npy``."""
    return f"{modality}_embeddings.npy"


class _RowWriter:
    """Appends [b, ...] blocks to ``path`` (.npy) with at most ``capacity`` rows in all;
    ``close()`` trims the file to the rows written."""

    def __init__(self, path: str, capacity: int):
        self.path, self.capacity, self.rows = path, capacity, 0
        self._partial = path + ".partial"
        self._array = None

    def append(self, block: np.ndarray) -> None:
        if self._array is None:
            self._array = np.lib.format.open_memmap(
                self._partial, mode="w+", dtype=block.dtype, shape=(self.capacity, *block.shape[1:])
            )
        self._array[self.rows : self.rows + len(block)] = block
        self.rows += len(block)

    def close(self) -> None:
        if self._array is None:
            raise ValueError(f"{self.path}: no rows to write (the data is empty)")
        self._array.flush()
        if self.rows < self.capacity:  # unreadable examples were skipped: trim
            out = np.lib.format.open_memmap(
                self.path,
                mode="w+",
                dtype=self._array.dtype,
                shape=(self.rows, *self._array.shape[1:]),
            )
            for start in range(0, self.rows, 65536):
                stop = min(start + 65536, self.rows)
                out[start:stop] = self._array[start:stop]
            out.flush()
            del out
            self._array = None
            os.remove(self._partial)
        else:
            self._array = None
            os.replace(self._partial, self.path)


def export_embeddings(
    config: ml_collections.ConfigDict,
    encoder: Encoder,
    spec: str,
    output_dir: str,
    *,
    modalities: Sequence[str] = ("image", "text"),
    max_examples: int | None = None,
    batch_size: int = 256,
) -> dict:
    """Embeds the first ``max_examples`` (None = all) examples of source ``spec`` (split
    "test" unless named) and writes the files of the module docstring to ``output_dir``.
    Every process must call this; process 0 writes and gets the ``meta.json`` dict, the
    others ``{}``."""
    unknown = sorted(set(modalities) - set(encoder.embed))
    if unknown or not modalities:
        raise ValueError(f"--modalities: {list(modalities)}; choose from {sorted(encoder.embed)}")
    common.check_int("--max_examples", max_examples, allow_none=True)
    common.check_int("--batch_size", batch_size)
    processors = make_processors(config, train=False, tokenizer=encoder.tokenizer)
    processors = {m: processors[m] for m in modalities}
    options = DataOptions.from_config(  # as the evals read: pp_eval, strict
        config.data, requests=tuple(p.request for p in processors.values())
    )
    source = common.open_eval_source(
        spec, image_size=config.data.image_size, seed=config.seed, source_kwargs=options
    )
    batches = common.make_batches(
        source,
        batch_size=batch_size,
        processors=processors,
        max_examples=max_examples,
        options=options,
    )
    capacity = len(source) if max_examples is None else min(max_examples, len(source))
    writing = jax.process_index() == 0  # every process embeds (one global computation)
    if writing:
        os.makedirs(output_dir, exist_ok=True)
    writers = {"id": _RowWriter(os.path.join(output_dir, "ids.npy"), capacity)}
    writers.update(
        {m: _RowWriter(os.path.join(output_dir, embeddings_file(m)), capacity) for m in modalities}
    )
    for batch in batches:
        # Padded to batch_size: one compiled shape, also for the last partial batch.
        blocks = {
            m: common.embed_in_batches(encoder.embed[m], batch[m], batch_size) for m in modalities
        }
        if writing:
            writers["id"].append(np.asarray(batch["id"], np.int64))
            for m, block in blocks.items():
                writers[m].append(block)
    if not writing:
        return {}
    for writer in writers.values():
        writer.close()
    meta = {
        "data": spec,
        "model": encoder.source,
        "step": encoder.step,
        "num_examples": writers["id"].rows,
        "dim": int(np.load(writers[modalities[0]].path, mmap_mode="r").shape[1]),
        "files": {"ids": "ids.npy", **{m: embeddings_file(m) for m in modalities}},
    }
    with open(os.path.join(output_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def main(holders: dict[str, flags.FlagHolder], argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if holders["data"].value is None or holders["output"].value is None:
        raise app.UsageError("--data and --output are required")
    encoder = encoder_from_flags(holders)
    meta = export_embeddings(
        holders["config"].value,
        encoder,
        holders["data"].value,
        holders["output"].value,
        modalities=holders["modalities"].value,
        max_examples=holders["max_examples"].value,
        batch_size=holders["batch_size"].value,
    )
    if meta:
        logging.info("Wrote %s", holders["output"].value)
        print(json.dumps(meta, indent=2))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """The flags of this CLI: ``evaluate.define_model_flags`` and those of the export."""
    holders = define_model_flags(flag_values)
    fv = {"flag_values": flag_values}
    holders.update(
        data=flags.DEFINE_string("data", None, "Source spec, e.g. generated:shapes:test.", **fv),
        output=flags.DEFINE_string("output", None, "Folder for the .npy files.", **fv),
        modalities=flags.DEFINE_list("modalities", ["image", "text"], "Embeddings to write.", **fv),
        max_examples=flags.DEFINE_integer("max_examples", None, "First N examples (all).", **fv),
        batch_size=flags.DEFINE_integer("batch_size", 256, "Examples embedded at once.", **fv),
    )
    return holders


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))
