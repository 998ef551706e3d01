"""The digits study's data writer (experiments/digits_data.py) and recipe
(configs/studies/siglip_digits.py): the split is stratified, disjoint and deterministic,
the CSVs are what the ``csv:`` source reads with the config's default column keys, the
writer is idempotent, and the recipe's prompts fit its text length and match the data.
Skipped without scikit-learn (an experiment-only requirement, in the ``[dev]`` extra)."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn.datasets")

from PIL import Image  # noqa: E402

from multimodal_ssl import config as config_lib  # noqa: E402
from multimodal_ssl.data.csv_source import CsvSource  # noqa: E402
from multimodal_ssl.recipes import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "studies" / "siglip_digits.py")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digits_data = _module(ROOT / "experiments" / "digits_data.py", "digits_data_under_test")
recipe = _module(Path(RECIPE), "siglip_digits_under_test")


def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    np.random.default_rng(1).shuffle(labels)
    train, test = digits_data.stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(labels)))
    for c, n in enumerate(np.bincount(labels)):
        assert np.sum(labels[test] == c) == round(0.2 * n)
    again = digits_data.stratified_split(labels, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again, strict=True))
    other = digits_data.stratified_split(labels, 0.2, seed=1)[1]
    assert not np.array_equal(test, other)


def test_writer_csvs_read_by_csv_source(tmp_path):
    out = str(tmp_path / "digits")
    meta = digits_data.write(out, size=16)
    assert (meta["train"], meta["test"]) == (1438, 359)
    defaults = config_lib.base_config().data
    rows = {}
    for split in ("train", "test"):
        source = CsvSource(
            os.path.join(out, f"{split}.csv"),
            image_key=defaults.csv_image_key,
            caption_key=defaults.csv_caption_key,
            label_key="label",
        )
        rows[split] = [source[i] for i in range(len(source))]
    assert len(rows["train"]) == 1438 and len(rows["test"]) == 359
    first = rows["train"][0]
    image = np.asarray(Image.open(io.BytesIO(first["image"])))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # Nearest-neighbour upscaling: 2x2 blocks of one grey level, equal in R, G, B.
    assert np.array_equal(image, np.repeat(np.repeat(image[::2, ::2], 2, 0), 2, 1))
    assert np.array_equal(image[..., 0], image[..., 2])
    # Each training caption is one of the phrasings of its label, and all are used; the
    # test captions are the canonical phrasing.
    used = set()
    for row in rows["train"]:
        options = [digits_data.caption(t, row["label"]) for t in digits_data.TRAIN_TEMPLATES]
        assert row["caption"] in options
        used.add(options.index(row["caption"]))
    assert used == set(range(len(digits_data.TRAIN_TEMPLATES)))
    assert {r["caption"] for r in rows["test"]} == {
        digits_data.caption(digits_data.CANONICAL, c) for c in range(10)
    }
    # The splits are disjoint sets of image files, together every scan.
    paths = {}
    for split in ("train", "test"):
        with open(os.path.join(out, f"{split}.csv"), newline="") as f:
            paths[split] = [r[defaults.csv_image_key] for r in csv.DictReader(f)]
    assert not set(paths["train"]) & set(paths["test"])
    assert len(set(paths["train"]) | set(paths["test"])) == 1797


def test_writer_is_idempotent_and_refuses_other_args(tmp_path):
    out = str(tmp_path / "digits")
    digits_data.write(out, size=8)
    train = os.path.join(out, "train.csv")
    before = os.stat(train).st_mtime_ns
    os.utime(train, ns=(before - 10**9, before - 10**9))
    digits_data.write(out, size=8)
    assert os.stat(train).st_mtime_ns == before - 10**9  # not rewritten
    with pytest.raises(ValueError, match="use another --out"):
        digits_data.write(out, size=8, seed=1)


def test_recipe_reads_digits_dir_and_fits_its_prompts(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITS_DIR", str(tmp_path))
    assert recipe.CLASSNAMES == digits_data.CLASSNAMES
    assert recipe.TEMPLATES == digits_data.ZEROSHOT_TEMPLATES
    for arg in (None, "tiny"):
        config = load_recipe(RECIPE, arg)
        config_lib.validate(config)
        assert config.data.train == f"csv:{tmp_path}/train.csv"
        assert config.evals.zeroshot.data == f"csv:{tmp_path}/test.csv"
        assert config.evals.knn.train_data == f"csv:{tmp_path}/train.csv"
        # Every caption and prompt fits the text length, so none is cut and none collide.
        texts = [digits_data.caption(t, c) for t in digits_data.TRAIN_TEMPLATES for c in range(10)]
        prompts = [t.format(n) for t in recipe.TEMPLATES for n in recipe.CLASSNAMES]
        assert max(len(s.encode()) for s in texts + prompts) <= config.data.max_text_len
    full = load_recipe(RECIPE, None)
    every = {cfg.every_steps for cfg in full.evals.values()}
    assert every == {full.total_steps // recipe.EVALS}
