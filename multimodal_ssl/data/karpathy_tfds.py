"""Prepares an image-caption dataset in the Karpathy-split JSON format (Flickr30k,
Flickr8k, COCO) as an array_record TFDS dataset, without TensorFlow:

    python -m multimodal_ssl.data.karpathy_tfds --name=flickr30k \\
        --karpathy_json=/data/dataset_flickr30k.json --images=/data/flickr30k-images \\
        --tfds_dir=~/tensorflow_datasets

The JSON (Karpathy & Fei-Fei, 2015) is ``{"images": [{"filename", "split", "sentences":
[{"raw": caption}, ...]}, ...]}`` (a ``filepath`` field, as COCO's, is joined before the
file name). The dataset ``NAME`` (version 1.0.0) gets one split per ``split`` value
(``train``, ``val``, ``test``, ``restval``) and the features of TFDS's ``coco_captions``
that the retrieval benchmarks read: ``image`` (the image file's bytes, unchanged),
``captions/text`` (every caption of the image) and ``image/filename``; so
``tfds:flickr30k:test`` is the ``flickr30k`` benchmark (1000 images, 5 captions each).
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterator
from typing import Any

from absl import app, flags

VERSION = "1.0.0"


def read_karpathy(path: str, images_dir: str) -> dict[str, list[dict[str, Any]]]:
    """``{split: [{"path", "filename", "captions": [str]}]}`` of the Karpathy JSON at
    ``path``; ValueError naming the file and entry when a field or an image is missing."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a JSON object with an 'images' list")
    splits: dict[str, list[dict[str, Any]]] = {}
    for i, entry in enumerate(data["images"]):
        try:
            name = os.path.join(entry.get("filepath", ""), entry["filename"])
            captions = [s["raw"].strip() for s in entry["sentences"]]
            split = entry["split"]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: images[{i}] lacks {e} (needs filename, split, sentences[].raw)"
            ) from None
        image_path = os.path.join(images_dir, name)
        if not os.path.isfile(image_path):
            raise ValueError(f"{path}: images[{i}]: no image file {image_path}")
        if not captions or not all(captions):
            raise ValueError(f"{path}: images[{i}] ({name}): empty caption list or caption")
        splits.setdefault(split, []).append(
            {"path": image_path, "filename": name, "captions": captions}
        )
    if not splits:
        raise ValueError(f"{path}: no images")
    return splits


def prepare(name: str, karpathy_json: str, images_dir: str, tfds_dir: str) -> str:
    """Writes ``<tfds_dir>/<name>/1.0.0`` (array_record) from the Karpathy JSON; returns
    the dataset's folder. ``name`` must be a snake_case TFDS name that is not in the TFDS
    catalogue (its registered builder would be used to read it)."""
    import tensorflow_datasets as tfds  # local: heavy import

    try:
        tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
        pass  # good: not a catalogue name
    else:
        raise ValueError(f"--name={name}: a TFDS catalogue dataset; choose another name")
    splits = read_karpathy(karpathy_json, images_dir)

    def generate(examples) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, ex in enumerate(examples):
            with open(ex["path"], "rb") as f:
                image = io.BytesIO(f.read())
            yield (
                i,
                {
                    "image": image,
                    "image/filename": ex["filename"],
                    "captions": {"text": ex["captions"]},
                },
            )

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }
    )
    attrs = {
        "VERSION": tfds.core.Version(VERSION),
        "_info": lambda self: tfds.core.DatasetInfo(builder=self, features=features),
        "_split_generators": lambda self, dl: {s: generate(ex) for s, ex in splits.items()},
        "_generate_examples": lambda self, examples: generate(examples),
    }
    class_name = "".join(part.capitalize() for part in name.split("_"))
    builder_cls = type(
        class_name, (tfds.core.GeneratorBasedBuilder,), attrs, skip_registration=True
    )
    if builder_cls.name != name:
        raise ValueError(
            f"--name={name}: expected a snake_case name (TFDS reads {builder_cls.name})"
        )
    tfds_dir = os.path.expanduser(tfds_dir)
    builder = builder_cls(data_dir=tfds_dir, file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


def main(holders: dict[str, flags.FlagHolder], argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for key in ("name", "karpathy_json", "images", "tfds_dir"):
        if not holders[key].value:
            raise app.UsageError(f"--{key} is required")
    path = prepare(
        holders["name"].value,
        holders["karpathy_json"].value,
        holders["images"].value,
        holders["tfds_dir"].value,
    )
    print(f"Prepared {path}")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    fv = {"flag_values": flag_values}
    return {
        "name": flags.DEFINE_string("name", None, "Dataset name, e.g. flickr30k.", **fv),
        "karpathy_json": flags.DEFINE_string("karpathy_json", None, "dataset_*.json.", **fv),
        "images": flags.DEFINE_string("images", None, "Folder of the image files.", **fv),
        "tfds_dir": flags.DEFINE_string("tfds_dir", None, "TFDS data dir to write to.", **fv),
    }


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))
