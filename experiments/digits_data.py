"""A small *real* image-text set for the trainer's ``csv:`` source: scikit-learn's bundled
``load_digits`` (1,797 real 8x8 scans of handwritten digits 0-9, UCI "optdigits" test
set; shipped inside the scikit-learn wheel, nothing is downloaded).

    python experiments/digits_data.py --out=/tmp/digits

writes, under ``--out``:

- ``images/NNNN.png``: each scan as an RGB PNG, grey levels 0..16 scaled to 0..255
  (ink bright on black), upscaled 8 -> ``--size`` (32) px with nearest neighbour, so
  every original pixel is a ``size/8``-px block and nothing is invented;
- ``train.csv`` / ``test.csv``: a fixed stratified split (``--test_fraction`` 0.2,
  ``--seed`` 0: 1,438 / 359 rows), columns ``filepath`` (relative to the CSV's folder),
  ``title`` (the caption) and ``label`` (0-9): the ``csv:`` source's defaults
  (``data.csv_image_key``, ``data.csv_caption_key``, and the ``label`` column evals read);
- ``classnames.txt``: ``zero`` .. ``nine``, one per line, in label order;
- ``meta.json``: the arguments, row counts and a digest of the split.

**The text side is templated from the labels**: a training caption is one of
``TRAIN_TEMPLATES`` (digit word or numeral), chosen per example by a seeded generator, so
the set tests the image tower and the recipe on real pixels, not real language. The test
captions are all ``CANONICAL`` ("a handwritten digit seven"), one of the training
phrasings, so retrieval on ``test.csv`` is class-level: image->text R@1 is the share of
test images whose best of the 10 class captions is their own (zero-shot with this single
prompt); text->image R@1 the share of the 10 captions whose best image has their digit.

Idempotent: when ``meta.json`` exists with the same arguments nothing is written; other
arguments for an existing folder are an error (use a new ``--out``). scikit-learn is an
experiment-only requirement here (it is in the ``[dev]`` extra, not a dependency of the
package).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image

CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# ``{word}``: the class name above; ``{digit}``: the numeral.
TRAIN_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {digit} written by hand",
    "a scan of a handwritten {digit}",
    "a handwritten {word}",
    "the digit {word}, written by hand",
)
CANONICAL = TRAIN_TEMPLATES[0]
# Zero-shot prompts ("{}" = the class name): the word-form training phrasings.
ZEROSHOT_TEMPLATES = ("a handwritten digit {}", "a handwritten {}", "the digit {}, written by hand")
COLUMNS = ("filepath", "title", "label")


def caption(template: str, label: int) -> str:
    """``template`` filled with digit ``label`` (word and numeral)."""
    return template.format(word=CLASSNAMES[label], digit=str(label))


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both sorted: per class, ``round(n_c *
    test_fraction)`` examples drawn without replacement by ``default_rng(seed)`` go to
    test. Deterministic in (labels, test_fraction, seed)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = round(len(members) * test_fraction)
        test.append(rng.choice(members, size=k, replace=False))
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 float scan (0..16) -> uint8 [size, size, 3] (nearest neighbour)."""
    if size % image.shape[0] or size % image.shape[1]:
        raise ValueError(f"size: {size} is not a multiple of the scan's {image.shape}")
    grey = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    grey = grey.repeat(size // image.shape[0], 0).repeat(size // image.shape[1], 1)
    return np.repeat(grey[..., None], 3, axis=-1)


def _write_csv(path: str, rows: list[tuple[str, str, int]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, path)


def write(out: str, *, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Writes the dataset under ``out`` (see the module docstring) unless it is there;
    -> its ``meta.json`` contents. ValueError when ``out`` holds another configuration."""
    from sklearn.datasets import load_digits  # experiment-only requirement

    args = {"size": size, "test_fraction": test_fraction, "seed": seed}
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("args") != args:
            raise ValueError(
                f"{out} holds the digits set with {meta.get('args')}, not {args}; use another --out"
            )
        return meta
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    # The phrasing of each training caption: seeded, independent of the split's draws.
    phrasing = np.random.default_rng([seed, 1]).integers(len(TRAIN_TEMPLATES), size=len(labels))
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for i, scan in enumerate(digits.images):
        Image.fromarray(upscale(scan, size)).save(os.path.join(out, "images", f"{i:04d}.png"))
    train = [
        (f"images/{i:04d}.png", caption(TRAIN_TEMPLATES[phrasing[i]], labels[i]), int(labels[i]))
        for i in train_idx
    ]
    test = [
        (f"images/{i:04d}.png", caption(CANONICAL, labels[i]), int(labels[i])) for i in test_idx
    ]
    _write_csv(os.path.join(out, "train.csv"), train)
    _write_csv(os.path.join(out, "test.csv"), test)
    with open(os.path.join(out, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSNAMES) + "\n")
    digest = hashlib.sha256(np.asarray(test_idx, np.int64).tobytes()).hexdigest()[:16]
    meta = {
        "source": "sklearn.datasets.load_digits",
        "args": args,
        "train": len(train),
        "test": len(test),
        "test_indices_sha256": digest,
    }
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)  # last: its presence means complete
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/digits")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        meta = write(args.out, size=args.size, test_fraction=args.test_fraction, seed=args.seed)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"{args.out}: {meta['train']} train / {meta['test']} test rows ({meta['args']})")


if __name__ == "__main__":
    main()
