"""Records as named fields: one processor per modality (image, depth, text, audio,
vector), field requests to the sources, masks for modalities a source lacks, and config
errors that name the modality and the key."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
from data_fixtures import image_csv, write_csv

from multimodal_ssl.config import set_towers, validate
from multimodal_ssl.data import modalities, pipeline, shapes
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.sources import get_source
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.recipes import load_recipe
from tests.test_train import ROOT

AUDIO_PP = "resample(8000)|crop(0.25)|log_mel(16, 32, 16)"


def four_modality_config():
    """The tiny imagebind recipe: image, text, depth and audio towers."""
    return load_recipe(str(ROOT / "configs" / "imagebind.py"), "tiny")


def test_kinds_follow_the_name_then_the_tower_type():
    assert modalities.modality_kind("depth", "vit") == "depth"
    assert modalities.modality_kind("thermal", "vit") == "image"
    assert modalities.modality_kind("speech", "audio") == "audio"
    assert modalities.modality_kind("imu", "sequence") == "vector"
    with pytest.raises(ValueError, match=r"config\.model\.towers\.x: cannot tell"):
        modalities.modality_kind("x", "custom")


def test_processors_of_four_modalities_read_generated_scenes():
    config = four_modality_config()
    procs = modalities.make_processors(config, train=False)
    assert {m: p.kind for m, p in procs.items()} == {
        "audio": "audio",
        "depth": "depth",
        "image": "image",
        "text": "text",
    }
    requests = tuple(p.request for p in procs.values())
    assert FieldRequest("text", None, False) in requests  # each format's default field
    source = get_source(
        "generated:shapes:test",
        image_size=16,
        seed=0,
        default_split="test",
        source_kwargs={"shapes": dict(config.data.shapes), "requests": requests},
    )
    assert source.provides == {"audio", "depth", "image", "text"}
    batch = next(iter(pipeline.make_eval_batches(source, batch_size=4, processors=procs)))
    for m, p in procs.items():
        shape, dtype = p.example_shape()
        assert batch[m].shape == (4, *shape) and batch[m].dtype == dtype, m
    assert batch["depth"].shape == (4, 16, 16, 1)
    assert -1 <= batch["depth"].min() < batch["depth"].max() <= 1  # objects nearer than 1.0
    assert batch["audio"].shape == (4, 16, 16)  # 0.25 s at a 16 ms hop, 16 mel bins
    assert not any(k.startswith("mask/") for k in batch)


def test_depth_maps_become_one_channel_through_the_image_ops():
    proc = modalities.DepthProcessor("depth", None, "resize(4)|value_range(0, 1)", 4)
    depth = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = proc.finish(proc.read(depth, "here", np.random.default_rng(0))[None])
    assert out.shape == (1, 4, 4, 1)
    assert np.all(np.diff(out[0, :, :, 0].mean(axis=1)) > 0)  # still increasing by row
    with pytest.raises(ValueError, match="here: depth map must be finite"):
        proc.read(np.full((8, 8), np.nan, np.float32), "here", None)


def test_audio_is_synthesised_only_when_asked_for():
    plain = shapes.ShapesSource(split="test", image_size=8, seed=0, options=shapes.ShapesOptions())
    assert "audio" not in plain[0]
    asked = shapes.ShapesSource(
        split="test",
        image_size=8,
        seed=0,
        options=shapes.ShapesOptions(audio_seconds=0.5),
        requests=[FieldRequest("sound", "audio", True), FieldRequest("text", None, False)],
    )
    record = asked[0]
    assert set(record) >= {"sound", "text"} and "image" not in record
    assert record["sound"].shape == (8000,) and record["text"] == plain[0]["caption"]


def test_shape_and_colour_labels_for_zero_shot():
    src = shapes.ShapesSource(
        split="test",
        image_size=8,
        seed=0,
        options=shapes.ShapesOptions(),
        label_key="shape_label",
    )
    assert src.classnames == list(shapes.SHAPES)
    assert src[3]["label"] == src[3]["shape_label"]
    assert all(t.count("{}") == 1 for t in src.templates) and len(src.templates) == 108
    with pytest.raises(ValueError, match="label_key: 'size'"):
        shapes.ShapesSource(
            split="test", image_size=8, seed=0, options=shapes.ShapesOptions(), label_key="size"
        )


def test_vector_modalities_need_their_shape():
    assert modalities.vector_shape("vector(100, 6)") == (100, 6)
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    set_towers(config, {**config.model.towers, "imu": {"type": "sequence", "variant": "mu"}})
    with pytest.raises(ValueError, match=r"config\.data\.pp\.imu: .*'vector\(16\)'"):
        validate(config)
    config.data.pp = {"imu": "vector(20, 6)"}
    validate(config)
    proc = modalities.make_processors(config, train=True)["imu"]
    assert proc.read(np.ones((20, 6)), "w", None).dtype == np.float32
    with pytest.raises(ValueError, match=r"w: imu: expected finite f32 \[20, 6\]"):
        proc.read(np.ones((3, 6)), "w", None)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "data.pp",
            {"audio": "resample(8000)|crop(1)|nope(3)"},
            r"config\.data\.pp\.audio: .*nope",
        ),
        ("data.pp", {"smell": "vector(3)"}, r"config\.data\.pp\.smell: no tower for modality"),
        ("data.fields", {"smell": "x"}, r"config\.data\.fields\.smell: no tower for modality"),
        ("loss.pairs", "image-smell", r"config\.loss\.pairs: 'image-smell' names modality 'smell'"),
        ("loss.pairs", "anchor:smell", r"config\.loss\.pairs: anchor 'smell' has no tower"),
    ],
)
def test_bad_modality_setups_name_the_key(key, value, message):
    config = four_modality_config()
    node, leaf = config, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_an_eval_naming_a_modality_without_tower_fails_at_build():
    from multimodal_ssl.builder import Experiment

    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    config.evals.retrieval.candidates = "audio"
    with pytest.raises(ValueError, match=r"config\.evals\.retrieval\.candidates: modality 'audio'"):
        Experiment(config).evaluators()


def _audio_csv(root, n, *, bad=(), with_audio=True):
    """image files + captions (data_fixtures) and, per row, a 0.3 s WAV (garbage bytes for
    the rows in ``bad``)."""
    path = image_csv(str(root), n, label=False)
    with open(path) as f:
        header, *rows = [line.rstrip("\n").split(",") for line in f]
    if not with_audio:
        return path
    os.makedirs(root / "wav", exist_ok=True)
    for i, row in enumerate(rows):
        rel = f"wav/{i:04d}.wav"
        if i in bad:
            (root / rel).write_bytes(b"RIFF not a wav at all")
        else:
            tone = np.sin(2 * np.pi * (200 + 50 * i) * np.arange(2400) / 8000)
            soundfile.write(root / rel, tone.astype(np.float32), 8000)
        row.append(rel)
    return write_csv(str(root / "audio.csv"), [*header, "wav"], rows)


def _image_text_audio_config(train):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    tiny = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
    set_towers(config, {**config.model.towers, "audio": {"type": "audio", "patch_size": 4, **tiny}})
    config.data.train = train
    config.data.fields = {"audio": "wav"}
    config.data.pp = {"audio": AUDIO_PP}
    config.loss.impl = "global"
    config.loss.pairs = "anchor:image"
    config.batch_size = 4
    config.evals = {}
    return config


def _loader(config, batch_size=4):
    tok = get_tokenizer("bytes", config.data.max_text_len)
    return pipeline.train_loader_from_config(
        config, batch_size=batch_size, tokenizer=tok, shard_index=0, shard_count=1
    )


def test_an_undecodable_audio_file_is_skipped_and_counted(tmp_path):
    path = _audio_csv(tmp_path, 8, bad=(2,))
    config = _image_text_audio_config(f"csv:{path}")
    it = iter(_loader(config))
    batches = [next(it) for _ in range(4)]  # two epochs of the 7 good rows
    assert it.skipped >= 1
    assert all(b["audio"].shape == (4, 16, 16) for b in batches)
    assert 2 not in np.concatenate([b["id"] for b in batches])
    config.data.strict = True
    strict = iter(_loader(config))
    with pytest.raises(ValueError, match=r"audio\.csv row 3 \(line 4\): truncated WAV"):
        for _ in range(4):  # row 3 comes up within the first two epochs
            next(strict)


def test_a_tower_whose_field_no_source_has_stops_at_start(tmp_path):
    path = _audio_csv(tmp_path, 4, with_audio=False)
    config = _image_text_audio_config(f"csv:{path}")
    with pytest.raises(
        ValueError,
        match=r"modality 'audio': no data source has its field 'wav' "
        r"\(config\.data\.fields\.audio.*'filepath'",
    ):
        _loader(config)


def test_a_mixture_masks_the_modality_one_source_lacks(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with_audio = _audio_csv(tmp_path / "a", 6)
    without = _audio_csv(tmp_path / "b", 6, with_audio=False)
    config = _image_text_audio_config(f"[('csv:{with_audio}', 1), ('csv:{without}', 1)]")
    loader = _loader(config, batch_size=8)
    assert loader.masked == ("audio",)
    batch = next(iter(loader))
    present = batch["mask/audio"]
    assert 0 < present.sum() < 8
    assert np.all(batch["audio"][~present] == 0)
    assert np.all(np.abs(batch["audio"][present]).sum(axis=(1, 2)) > 0)


def test_eval_passes_keep_only_the_examples_with_every_modality():
    from multimodal_ssl.evals.common import complete_rows

    batch = {
        "image": np.arange(4),
        "audio": np.arange(4) * 10,
        "id": np.arange(4),
        "mask/audio": np.array([True, False, True, False]),
    }
    out = complete_rows(batch)
    assert set(out) == {"image", "audio", "id"}
    assert out["image"].tolist() == [0, 2] and out["audio"].tolist() == [0, 20]
    full = complete_rows({"image": np.arange(2), "mask/audio": np.ones(2, bool)})
    assert full["image"].tolist() == [0, 1]
