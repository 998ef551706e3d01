"""Tiny real-format datasets written by the data tests: image files + CSV, WebDataset
tars, a TFDS array_record dataset (written by tfds itself, no TensorFlow).

Example i's image is a deterministic noise picture of ``image_shape(i)`` pixels
(sizes vary, so resizing and cropping are exercised); its caption is
``f"caption {i} of class {i % NUM_CLASSES}"`` and its label ``i % NUM_CLASSES``.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np
from PIL import Image

NUM_CLASSES = 3
CLASSNAMES = ["red thing", "green thing", "blue thing"]


def image_shape(i: int) -> tuple[int, int]:
    return 12 + (i % 3) * 4, 16 + (i % 2) * 6  # (H, W), 12..20 x 16..22


def image(i: int) -> np.ndarray:
    """uint8 [H, W, 3]: noise around a class colour."""
    rng = np.random.default_rng(i)
    base = np.zeros(3)
    base[i % NUM_CLASSES] = 180
    pixels = base + rng.integers(0, 60, (*image_shape(i), 3))
    return pixels.astype(np.uint8)


def caption(i: int) -> str:
    return f"caption {i} of class {i % NUM_CLASSES}"


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image_files(root: str, ids, fmt: str = "PNG") -> list[str]:
    """Writes image(i) for i in ids to root/img/i.{png,jpg}; returns paths relative to root."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    paths = []
    for i in ids:
        rel = f"img/{i:04d}.{ext}"
        with open(os.path.join(root, rel), "wb") as f:
            f.write(encode(image(i), fmt))
        paths.append(rel)
    return paths


def write_csv(path: str, header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def image_csv(root: str, n: int, *, fmt: str = "PNG", label: bool = True, name="data.csv") -> str:
    """root/name: filepath,title[,label] rows for examples 0..n-1 (images written too)."""
    paths = write_image_files(root, range(n), fmt)
    header = ["filepath", "title"] + (["label"] if label else [])
    rows = [
        [p, caption(i)] + ([str(i % NUM_CLASSES)] if label else []) for i, p in enumerate(paths)
    ]
    return write_csv(os.path.join(root, name), header, rows)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds_shard(path: str, ids, *, fmt: str = "JPEG", caption_in: str = "txt") -> str:
    """One tar with samples {key}.jpg/png + .txt (or .json {"caption": ...}) + .cls."""
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    with tarfile.open(path, "w") as tar:
        for i in ids:
            key = f"sample{i:06d}"
            add_member(tar, f"{key}.{ext}", encode(image(i), fmt))
            if caption_in == "txt":
                add_member(tar, f"{key}.txt", caption(i).encode())
            else:
                add_member(tar, f"{key}.json", f'{{"caption": "{caption(i)}"}}'.encode())
            add_member(tar, f"{key}.cls", str(i % NUM_CLASSES).encode())
    return path


def write_tfds(data_dir: str, splits: dict[str, int], *, encoded: bool = False) -> str:
    """Prepares TFDS dataset "tiny_captions" in array_record format under data_dir:
    features image (raw uint8 Tensor, or an encoded-PNG Image feature with
    ``encoded``), caption (Text), label (ClassLabel with CLASSNAMES). Example i of a split
    is written with key i; TFDS stores examples in hash order, so readers find the
    example's index in its caption. Returns the dataset name."""
    import tensorflow_datasets as tfds

    image_feature = (
        tfds.features.Image(shape=(None, None, 3))
        if encoded
        else tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes")
    )

    class TinyCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": image_feature,
                        "caption": tfds.features.Text(),
                        "label": tfds.features.ClassLabel(names=CLASSNAMES),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {name: self._generate_examples(n) for name, n in splits.items()}

        def _generate_examples(self, n):
            for i in range(n):
                img = image(i)
                value = io.BytesIO(encode(img, "PNG")) if encoded else img
                yield i, {"image": value, "caption": caption(i), "label": i % NUM_CLASSES}

    builder = TinyCaptions(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return "tiny_captions"
