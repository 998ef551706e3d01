"""csv: sources: reading against PIL, column options, every bad-input case (skipped and
counted, logged with file and row, or an error in strict mode), host sharding, field
requests (audio file columns, missing columns, bad rows)."""

import io
import os
import re

import numpy as np
import pytest
import soundfile
from data_fixtures import caption, encode, image, image_csv, write_csv, write_image_files
from PIL import Image

from multimodal_ssl.data import pipeline, records, sources, tokenizers
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord

TOK = tokenizers.ByteTokenizer(32)


def open_csv(path, **options):
    return sources.get_source(
        f"csv:{path}", image_size=8, seed=0, default_split="train", source_kwargs=options
    )


def eval_pass(src, pp="resize(8)|value_range(0, 1)", strict=False, batch_size=4):
    return pipeline.make_eval_batches(
        src,
        batch_size=batch_size,
        tokenizer=TOK,
        image_size=8,
        options={"pp_eval": pp, "strict": strict},
    )


@pytest.mark.parametrize("name, delimiter", [("data.csv", ","), ("data.tsv", "\t")])
def test_rows_decode_like_pil_with_paths_relative_to_the_csv(
    tmp_path, monkeypatch, name, delimiter
):
    paths = write_image_files(str(tmp_path), range(6), fmt="PNG")
    paths[2] = str(tmp_path / paths[2])  # absolute paths work too
    rows = [[p, caption(i), str(i % 3)] for i, p in enumerate(paths)]
    csv_path = write_csv(str(tmp_path / name), ["filepath", "title", "label"], rows, delimiter)
    # Relative paths resolve against the CSV, not the cwd (restored after the test: the
    # other tests of this worker read repository-relative paths).
    monkeypatch.chdir(tmp_path.parent)
    src = open_csv(csv_path)
    assert len(src) == 6 and src.classnames is None
    batches = list(eval_pass(src))
    assert [b["id"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5]]
    got = np.concatenate([b["image"] for b in batches])
    for i in range(6):
        ref = (
            Image.open(tmp_path / f"img/{i:04d}.png").convert("RGB").resize((8, 8), Image.BILINEAR)
        )
        np.testing.assert_allclose(got[i], np.asarray(ref) / 255, atol=1e-6)
    texts = TOK.decode(np.concatenate([b["text"] for b in batches]))
    assert texts == [caption(i) for i in range(6)]
    assert np.concatenate([b["label"] for b in batches]).tolist() == [0, 1, 2, 0, 1, 2]


def test_column_options_and_missing_columns(tmp_path):
    paths = write_image_files(str(tmp_path), range(2))
    path = write_csv(
        str(tmp_path / "x.csv"),
        ["path", "text", "y"],
        [[p, caption(i), "1"] for i, p in enumerate(paths)],
    )
    src = open_csv(path, csv_image_key="path", csv_caption_key="text", label_key="y")
    assert src[1]["caption"] == caption(1) and src[1]["label"] == 1
    assert open_csv(path, csv_image_key="path", csv_caption_key="text")[1]["label"] == -1
    with pytest.raises(
        ValueError,
        match=r"csv:.*x\.csv: no column 'filepath' \(config "
        r"data\.csv_image_key\); the header has \['path', 'text', 'y'\]",
    ):
        open_csv(path)
    with pytest.raises(ValueError, match=r"no column 'title' \(config data\.csv_caption_key\)"):
        open_csv(path, csv_image_key="path")
    with pytest.raises(ValueError, match=r"no column 'label' \(the eval's label_key\)"):
        open_csv(path, csv_image_key="path", csv_caption_key="text", label_key="label")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        open_csv(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match=r"cannot read the CSV file"):
        open_csv(tmp_path / "nope.csv")


REASONS = {  # bad row (counted from 1 after the header) -> reason
    1: r"file .*missing\.jpg does not exist",
    3: r"undecodable or truncated image",
    5: r"undecodable or truncated image",
    7: r"empty caption",
    9: r"row has no field for column\(s\) \['title', 'label'\]",
    11: r"label 'cat' is not an integer",
    13: r"caption is not valid UTF-8",
}


def bad_rows_csv(root, bad=tuple(REASONS)):
    """A CSV of 16 JPEG rows, those in ``bad`` broken as REASONS says."""
    paths = write_image_files(str(root), range(16), fmt="JPEG")
    lines = [b"filepath,title,label"] + [
        f"{p},{caption(i)},{i % 3}".encode() for i, p in enumerate(paths)
    ]
    full = encode(image(3), "JPEG")
    broken = {
        1: lambda: b"img/missing.jpg,a caption,1",
        3: lambda: (root / "img/0003.jpg").write_bytes(full[: len(full) // 2]),  # truncated
        5: lambda: (root / "img/0005.jpg").write_bytes(b"<html>not an image</html>"),
        7: lambda: f"{paths[7]},   ,1".encode(),
        9: lambda: paths[9].encode(),
        11: lambda: f"{paths[11]},{caption(11)},cat".encode(),
        13: lambda: f"{paths[13]},".encode() + b"caf\xe9 \xff,1",
    }
    for row in bad:
        line = broken[row]()
        if isinstance(line, bytes):
            lines[row + 1] = line
    path = root / "bad.csv"
    path.write_bytes(b"\n".join(lines))
    return str(path)


def test_bad_rows_are_skipped_counted_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "SKIP_LOG", records.SkipLog())
    src = open_csv(bad_rows_csv(tmp_path))
    it = iter(
        pipeline.make_train_loader(
            src, batch_size=3, seed=0, tokenizer=TOK, image_size=8, num_epochs=2
        )
    )
    batches = list(it)
    ids = np.concatenate([b["id"] for b in batches]).tolist()
    good = [i for i in range(16) if i not in REASONS]
    assert len(batches) == 6 and sorted(ids) == sorted(good * 2)  # 18 good = 6 full batches
    # Every bad row, each epoch: counted with the batch that replaces it, so one that the
    # shuffle puts after the last good example of this finite stream may go uncounted.
    assert 2 * len(REASONS) - 1 <= it.skipped <= 2 * len(REASONS)
    logged = [r.getMessage() for r in caplog.records if "Skipping bad example" in r.getMessage()]
    assert len(logged) == records.LOG_FIRST_SKIPS  # the first ones, then only counted
    for row in REASONS:  # each names the file, the row and the reason
        pattern = rf"bad\.csv row {row + 1} \(line {row + 2}\): {REASONS[row]}"
        assert any(re.search(pattern, m) for m in logged), pattern
    eval_batches = eval_pass(src, "resize_small|center_crop|value_range")
    assert sum(len(b["id"]) for b in eval_batches) == 9 and eval_batches.skipped == 7


@pytest.mark.parametrize("row", sorted(REASONS))
def test_strict_mode_raises_naming_file_and_row(tmp_path, row):
    src = open_csv(bad_rows_csv(tmp_path, bad=[row]))
    match = rf"bad\.csv row {row + 1} \(line {row + 2}\): {REASONS[row]}"
    with pytest.raises(BadRecord, match=match):
        list(
            pipeline.make_train_loader(
                src, batch_size=2, seed=0, tokenizer=TOK, image_size=8, strict=True, num_epochs=1
            )
        )
    with pytest.raises(BadRecord, match=match):
        list(eval_pass(src, strict=True))


def test_two_hosts_never_share_an_example(tmp_path):
    src = open_csv(image_csv(str(tmp_path), 21))
    seen = []
    for index in (0, 1):
        it = pipeline.make_train_loader(
            src,
            batch_size=5,
            seed=3,
            tokenizer=TOK,
            image_size=8,
            shard_index=index,
            shard_count=2,
            num_epochs=1,
        )
        seen.append(np.concatenate([b["id"] for b in it]).tolist())
    assert len(seen[0]) == len(seen[1]) == 10 and not set(seen[0]) & set(seen[1])


def test_a_source_that_is_all_bad_stops_instead_of_spinning(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_SKIPS", 5)
    rows = [[f"img/none{i}.jpg", caption(i)] for i in range(8)]
    src = open_csv(write_csv(str(tmp_path / "x.csv"), ["filepath", "title"], rows))
    it = iter(pipeline.make_train_loader(src, batch_size=2, seed=0, tokenizer=TOK, image_size=8))
    with pytest.raises(
        ValueError,
        match=r"5 examples in a row were unreadable, the last: .*x\.csv "
        r"row \d \(line \d\): file .*none\d\.jpg does not exist",
    ):
        next(it)


AUDIO_RATE = 8000
REQUESTS = (
    FieldRequest("image", None, True),
    FieldRequest("text", None, False),
    FieldRequest("audio", "wav", True),
)


def write_wav(path, i: int) -> bytes:
    """A 0.1 s tone of 200 * (i + 1) Hz at AUDIO_RATE written to ``path``; its bytes."""
    t = np.arange(AUDIO_RATE // 10) / AUDIO_RATE
    soundfile.write(path, 0.5 * np.sin(2 * np.pi * 200 * (i + 1) * t), AUDIO_RATE)
    with open(path, "rb") as f:
        return f.read()


def audio_csv(root, rows=None):
    """root/av.csv: filepath,title,wav for examples 0..2 (or the given rows); the image
    and wav files are written. Returns (path, {i: wav bytes})."""
    paths = write_image_files(str(root), range(3))
    os.makedirs(root / "wav", exist_ok=True)
    wavs = {i: write_wav(root / f"wav/{i}.wav", i) for i in range(3)}
    if rows is None:
        rows = [[p, caption(i), f"wav/{i}.wav"] for i, p in enumerate(paths)]
    return write_csv(str(root / "av.csv"), ["filepath", "title", "wav"], rows), wavs


def test_requests_read_an_audio_file_column(tmp_path):
    path, wavs = audio_csv(tmp_path)
    src = open_csv(path, requests=REQUESTS)
    assert src.provides == {"image", "text", "audio"}
    assert src.available_fields == ["filepath", "title", "wav"]
    record = src[1]
    assert set(record) == {"image", "text", "audio", "label", "id", "where"}
    assert record["image"] == (tmp_path / "img/0001.png").read_bytes()
    assert record["text"] == caption(1) and record["label"] == -1 and record["id"] == 1
    assert record["audio"] == wavs[1]
    wave, rate = soundfile.read(io.BytesIO(record["audio"]))
    assert rate == AUDIO_RATE and wave.shape == (AUDIO_RATE // 10,)
    # A non-binary request of the same column gives its string.
    named = open_csv(path, requests=[FieldRequest("caption", "wav", False)])
    assert named[2]["caption"] == "wav/2.wav" and named.provides == {"caption"}
    assert repr(src) == repr(open_csv(path, requests=REQUESTS))
    assert "requests=(FieldRequest(key='image', name=None, binary=True), " in repr(src)
    assert repr(src) != repr(named)


def test_requests_none_keeps_the_image_caption_record(tmp_path):
    path, _ = audio_csv(tmp_path)
    src = open_csv(path)
    assert src.provides == {"image", "caption"}
    assert set(src[0]) == {"image", "caption", "label", "id", "where"}
    assert repr(src) == f"CsvSource({path!r}, keys=('filepath', 'title', None), rows=3)"


def test_a_request_for_a_missing_column_is_not_served(tmp_path):
    path = image_csv(str(tmp_path), 2, label=False)
    src = open_csv(path, requests=REQUESTS)
    assert src.provides == {"image", "text"} and src.available_fields == ["filepath", "title"]
    assert set(src[1]) == {"image", "text", "label", "id", "where"}
    # With requests no column is required, not even the image's.
    assert open_csv(path, csv_image_key="path", requests=REQUESTS).provides == {"text"}


@pytest.mark.parametrize(
    "row, reason",
    [
        (["img/0000.png", caption(0), ""], r"empty 'wav' field"),
        (["img/0000.png", caption(0), "  "], r"empty 'wav' field"),
        (["img/0000.png", caption(0), "wav/none.wav"], r".*file .*none\.wav does not exist"),
        (["img/0000.png", " ", "wav/0.wav"], r"empty 'title' field"),
        (["img/0000.png", caption(0)], r"row has no field for column\(s\) \['wav'\]"),
    ],
)
def test_a_bad_requested_field_names_the_row_and_column(tmp_path, row, reason):
    path, _ = audio_csv(tmp_path, [["img/0001.png", caption(1), "wav/1.wav"], row])
    src = open_csv(path, requests=REQUESTS)
    assert src[0]["text"] == caption(1)
    with pytest.raises(BadRecord, match=rf"av\.csv row 2 \(line 3\): {reason}"):
        src[1]


@pytest.mark.parametrize("key", ["label", "id", "where", "text"])
def test_reserved_or_repeated_request_keys_are_errors(tmp_path, key):
    path, _ = audio_csv(tmp_path)
    with pytest.raises(ValueError, match=rf"field request key {key!r}: repeated, or reserved"):
        open_csv(path, requests=[FieldRequest("text", None, False), FieldRequest(key, "wav", True)])
