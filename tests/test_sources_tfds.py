"""tfds: sources on array_record datasets prepared here by tfds itself (no TensorFlow):
raw uint8 Tensor and encoded Image features, class names, slicing, errors, field
requests (an extra depth feature, missing features, empty values)."""

import io
import re

import numpy as np
import pytest
from data_fixtures import CLASSNAMES, NUM_CLASSES, caption, encode, image, write_tfds
from PIL import Image

from multimodal_ssl.data import pipeline, sources, tokenizers
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord
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


DEPTH_EXAMPLES = 4
EMPTY_CAPTION = 3  # the example written with caption ""


def depth(i: int) -> np.ndarray:
    """uint8 [4 + i, 5, 1] filled with 10 i (its height tells the example)."""
    return np.full((4 + i, 5, 1), 10 * i, np.uint8)


def write_depth_tfds(data_dir: str) -> None:
    """Prepares "tiny_depth" (array_record, split train): features image (encoded-PNG
    Image), depth (uint8 Tensor [H, W, 1]) and caption (Text, empty in EMPTY_CAPTION)."""
    import tensorflow_datasets as tfds

    class TinyDepth(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "depth": tfds.features.Tensor(
                    shape=(None, None, 1), dtype=np.uint8, encoding="bytes"
                ),
                "caption": tfds.features.Text(),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(DEPTH_EXAMPLES):
                text = "" if i == EMPTY_CAPTION else caption(i)
                png = io.BytesIO(encode(image(i), "PNG"))
                yield i, {"image": png, "depth": depth(i), "caption": text}

    TinyDepth(data_dir=data_dir, file_format="array_record").download_and_prepare()


REQUESTS = (
    FieldRequest("image", None, True),
    FieldRequest("text", None, False),
    FieldRequest("depth", None, True),
    FieldRequest("audio", None, True),  # no such feature: not served
)


def test_requests_serve_an_extra_depth_feature(tmp_path):
    write_depth_tfds(str(tmp_path))
    src = open_tfds("tfds:tiny_depth:train", str(tmp_path), requests=REQUESTS)
    assert src.provides == {"image", "text", "depth"}
    assert src.available_fields == ["caption", "depth", "image"]
    assert "requests=(FieldRequest(key='image', name=None, binary=True), " in repr(src)
    seen = []
    for index in range(len(src)):
        try:
            record = src[index]
        except BadRecord as e:
            assert re.fullmatch(
                r"tfds:tiny_depth:train example \d: empty feature 'caption'", str(e)
            )
            seen.append(EMPTY_CAPTION)
            continue
        i = record["depth"].shape[0] - 4  # TFDS reorders the examples
        seen.append(i)
        assert set(record) == {"image", "text", "depth", "label", "id", "where"}
        np.testing.assert_array_equal(record["depth"], depth(i))
        assert record["text"] == caption(i).encode() and record["label"] == -1
        assert isinstance(record["image"], bytes)  # undecoded
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["image"]))), image(i))
    assert sorted(seen) == list(range(DEPTH_EXAMPLES))
    legacy = open_tfds("tfds:tiny_depth:train", str(tmp_path))
    assert legacy.provides == {"image", "caption"} and "requests" not in repr(legacy)
    assert set(legacy[0]) == {"image", "caption", "label", "id", "where"}


def test_a_request_for_a_missing_feature_is_not_served(tfds_dirs):
    src = open_tfds("tfds:tiny_captions:train", tfds_dirs["raw"], requests=REQUESTS)
    assert src.provides == {"image", "text"}
    assert set(src[0]) == {"image", "text", "label", "id", "where"}
    assert src[0]["image"].dtype == np.uint8 and src[0]["label"] >= 0
    # With requests the image feature is not required.
    src = open_tfds(
        "tfds:tiny_captions:train", tfds_dirs["raw"], tfds_image_key="img", requests=REQUESTS
    )
    assert src.provides == {"text"}
