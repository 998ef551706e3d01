"""tfds: sources on array_record datasets prepared here by tfds itself (no TensorFlow):
raw uint8 Tensor and encoded Image features, class names, slicing, errors."""

import re

import numpy as np
import pytest
from data_fixtures import CLASSNAMES, NUM_CLASSES, image, write_tfds
from PIL import Image

from multimodal_ssl.data import pipeline, sources, tokenizers
from multimodal_ssl.data.tfds_source import parse_tfds_spec

TOK = tokenizers.ByteTokenizer(32)


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("tfds_raw"))
    encoded = str(tmp_path_factory.mktemp("tfds_png"))
    write_tfds(raw, {"train": 10, "test": 5})
    write_tfds(encoded, {"train": 6}, encoded=True)
    return {"raw": raw, "encoded": encoded}


def open_tfds(spec, data_dir, **options):
    return sources.get_source(
        spec,
        image_size=8,
        seed=0,
        default_split="test",
        source_kwargs={"tfds_dir": data_dir, **options},
    )


@pytest.mark.parametrize(
    "rest, name, split",
    [
        ("mnist", "mnist", "test"),
        ("mnist:train", "mnist", "train"),
        ("mnist:3.0.1", "mnist:3.0.1", "test"),
        ("coco_captions/2017:1.1.0:val", "coco_captions/2017:1.1.0", "val"),
        ("x:train[:10%]", "x", "train[:10%]"),
        ("x:1.0.0:train[2:5]+test", "x:1.0.0", "train[2:5]+test"),
    ],
)
def test_spec_parsing(rest, name, split):
    assert parse_tfds_spec(rest, "test") == (name, split)


@pytest.mark.parametrize("kind", ["raw", "encoded"])
def test_examples_read_like_the_written_ones(tfds_dirs, kind):
    src = open_tfds("tfds:tiny_captions:train", tfds_dirs[kind])
    assert len(src) == (10 if kind == "raw" else 6) and src.classnames == CLASSNAMES
    batches = list(
        pipeline.make_eval_batches(
            src,
            batch_size=4,
            tokenizer=TOK,
            image_size=8,
            options={"pp_eval": "resize(8)|value_range(0, 1)", "tfds_dir": tfds_dirs[kind]},
        )
    )
    texts = TOK.decode(np.concatenate([b["text"] for b in batches]))
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    written = [int(re.match(r"caption (\d+) ", t).group(1)) for t in texts]  # TFDS reorders
    assert sorted(written) == list(range(len(src)))
    for row, i in enumerate(written):
        ref = Image.fromarray(image(i)).resize((8, 8), Image.BILINEAR)
        np.testing.assert_allclose(images[row], np.asarray(ref) / 255, atol=1e-6)
        assert labels[row] == i % NUM_CLASSES


def test_default_split_slicing_and_training(tfds_dirs):
    assert len(open_tfds("tfds:tiny_captions", tfds_dirs["raw"])) == 5  # default_split
    assert len(open_tfds("tfds:tiny_captions:train[:4]", tfds_dirs["raw"])) == 4
    src = open_tfds("tfds:tiny_captions:train", tfds_dirs["raw"])
    it = pipeline.make_train_loader(
        src, batch_size=5, seed=0, tokenizer=TOK, image_size=8, num_epochs=1
    )
    assert sorted(np.concatenate([b["id"] for b in it]).tolist()) == list(range(10))


def test_a_source_without_captions_evaluates_but_does_not_train(tfds_dirs):
    src = open_tfds("tfds:tiny_captions:train", tfds_dirs["raw"], tfds_caption_key="text")
    assert src.has_captions is False
    batch = next(iter(pipeline.make_eval_batches(src, batch_size=4, tokenizer=TOK, image_size=8)))
    assert np.all(batch["text"] == 0) and batch["label"].min() >= 0
    with pytest.raises(ValueError, match=r"TfdsSource.* has no captions: it can be evaluated"):
        pipeline.make_train_loader(src, batch_size=2, seed=0, tokenizer=TOK, image_size=8)


@pytest.mark.parametrize(
    "spec, options, match",
    [
        ("tfds:no_such_ds", {}, r"tfds:no_such_ds: no such dataset in data dir"),
        (
            "tfds:tiny_captions",
            {"tfds_image_key": "img"},
            r"no feature 'img' \(config data\.tfds_image_key\); "
            r"features: \['caption', 'image', 'label'\]",
        ),
        ("tfds:tiny_captions", {"label_key": "y"}, r"no feature 'y' \(the eval's label_key\)"),
        ("tfds:tiny_captions:val", {}, r"tfds:tiny_captions:val: .*Unknown split 'val'"),
        ("tfds:", {}, r"expected 'tfds:NAME\[:SPLIT\]'"),
        ("tfds:a:b:c", {}, r"expected 'tfds:NAME\[:VERSION\]\[:SPLIT\]'"),
    ],
)
def test_errors_name_the_dataset_and_key(tfds_dirs, spec, options, match):
    with pytest.raises(ValueError, match=match):
        open_tfds(spec, tfds_dirs["raw"], **options)
