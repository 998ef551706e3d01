"""multimodal_ssl.embed: rows aligned with ids and with an independent pass over the
same source, partial outputs trimmed, and the command line with imported weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from tiny_checkpoint import write_tiny_npz

from multimodal_ssl import embed, evaluate
from multimodal_ssl.data.pipeline import image_text_processors
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.evals import common
from multimodal_ssl.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _unit(x):
    x = np.asarray(x, np.float32).reshape(len(x), -1)[:, :12] + 0.5
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_encoder(max_len=16):
    """Embeddings that are plain functions of the pixels / token ids."""
    return evaluate.Encoder(
        {"image": _unit, "text": _unit}, get_tokenizer("bytes", max_len), 5, "fake"
    )


def test_export_rows_match_an_independent_pass(tmp_path):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    meta = embed.export_embeddings(
        config,
        fake_encoder(),
        "generated:shapes:test",
        str(tmp_path),
        max_examples=37,
        batch_size=16,
    )
    assert meta == {
        "data": "generated:shapes:test",
        "model": "fake",
        "step": 5,
        "num_examples": 37,
        "dim": 12,
        "files": {"ids": "ids.npy", "image": "image_embeddings.npy", "text": "text_embeddings.npy"},
    }
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    source = common.open_eval_source(
        "generated:shapes:test", image_size=16, seed=0, source_kwargs=None
    )
    (batch,) = common.make_batches(
        source,
        batch_size=37,
        processors=image_text_processors(get_tokenizer("bytes", 16), 16),
        max_examples=37,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), np.arange(37))
    np.testing.assert_array_equal(np.load(tmp_path / "image_embeddings.npy"), _unit(batch["image"]))
    np.testing.assert_array_equal(np.load(tmp_path / "text_embeddings.npy"), _unit(batch["text"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ids.npy",
        "image_embeddings.npy",
        "meta.json",
        "text_embeddings.npy",
    ]  # no .partial files left


def test_export_one_modality_and_bad_arguments(tmp_path):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")
    meta = embed.export_embeddings(
        config,
        fake_encoder(),
        "generated:shapes:test",
        str(tmp_path),
        modalities=["text"],
        max_examples=5,
    )
    assert meta["files"] == {"ids": "ids.npy", "text": "text_embeddings.npy"}
    assert not (tmp_path / "image_embeddings.npy").exists()
    with pytest.raises(ValueError, match=r"--modalities: \['audio'\]"):
        embed.export_embeddings(
            config, fake_encoder(), "generated:shapes:test", str(tmp_path), modalities=["audio"]
        )
    with pytest.raises(ValueError, match="--max_examples: must be an int >= 1"):
        embed.export_embeddings(
            config, fake_encoder(), "generated:shapes:test", str(tmp_path), max_examples=0
        )


def test_row_writer_trims_to_the_rows_written(tmp_path):
    """Sources may drop unreadable examples: the file holds the rows actually written."""
    writer = embed._RowWriter(str(tmp_path / "x.npy"), capacity=10)
    writer.append(np.arange(8, dtype=np.float32).reshape(4, 2))
    writer.append(np.ones((3, 2), np.float32))
    writer.close()
    out = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(
        out, np.concatenate([np.arange(8).reshape(4, 2), np.ones((3, 2))])
    )
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_command_line_with_pretrained_npz(tmp_path):
    write_tiny_npz(str(tmp_path / "w.npz"))
    fv = flags.FlagValues()
    holders = embed.define_flags(fv)
    out = tmp_path / "out"
    fv(
        [
            "embed",
            f"--config={ROOT}/configs/siglip.py:tiny",
            f"--pretrained={tmp_path / 'w.npz'}",
            "--data=generated:shapes:test",
            f"--output={out}",
            "--modalities=image",
            "--max_examples=20",
            "--batch_size=8",
        ]
    )
    embed.main(holders, ["embed"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == str(tmp_path / "w.npz") and meta["step"] == 0
    emb = np.load(out / "image_embeddings.npy")
    assert emb.shape == (20, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert len(np.unique(emb.round(4), axis=0)) == 20  # distinct images, distinct rows
    np.testing.assert_array_equal(np.load(out / "ids.npy"), np.arange(20))
