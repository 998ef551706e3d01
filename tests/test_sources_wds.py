"""wds: sources: shard patterns, tar indexing and reading against PIL, empty / missing /
truncated shards and bad samples (counted skips, or errors in strict mode), field
requests (wav members, json fields, missing members)."""

import io
import json
import re
import tarfile

import numpy as np
import pytest
import soundfile
from data_fixtures import NUM_CLASSES, add_member, caption, encode, image, write_wds_shard
from PIL import Image

from multimodal_ssl.data import pipeline, sources, tokenizers
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord
from multimodal_ssl.data.wds_source import WdsSource, expand_braces, expand_shards

TOK = tokenizers.ByteTokenizer(32)


def open_wds(pattern, **options):
    return sources.get_source(
        f"wds:{pattern}", image_size=8, seed=0, default_split="train", source_kwargs=options
    )


def test_patterns_expand_like_a_reference(tmp_path):
    assert expand_braces("s-{000..011}.tar") == [f"s-{i:03d}.tar" for i in range(12)]
    assert expand_braces("{a,b}/x{1..2}") == ["a/x1", "a/x2", "b/x1", "b/x2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for name in ("b.tar", "a.tar", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(f"{tmp_path}/*.tar::{tmp_path}/x{{7..8}}.tar") == [
        f"{tmp_path}/a.tar",
        f"{tmp_path}/b.tar",
        f"{tmp_path}/x7.tar",
        f"{tmp_path}/x8.tar",
    ]
    with pytest.raises(ValueError, match=r"brace range \{3\.\.1\} .* is empty"):
        expand_braces("{3..1}")
    with pytest.raises(ValueError, match=r"wds:.*nothing-\*\.tar: the pattern matches no shard"):
        open_wds(f"{tmp_path}/nothing-*.tar")


def test_samples_read_like_pil_with_txt_json_and_cls(tmp_path):
    write_wds_shard(str(tmp_path / "s-0.tar"), range(0, 5), fmt="PNG", caption_in="txt")
    write_wds_shard(str(tmp_path / "s-1.tar"), range(5, 9), fmt="PNG", caption_in="json")
    src = open_wds(f"{tmp_path}/s-{{0..1}}.tar")
    assert len(src) == 9 and not src.problems
    batches = list(
        pipeline.make_eval_batches(
            src,
            batch_size=4,
            tokenizer=TOK,
            image_size=8,
            options={"pp_eval": "resize(8)|value_range(0, 1)"},
        )
    )
    images = np.concatenate([b["image"] for b in batches])
    for i in range(9):
        ref = Image.fromarray(image(i)).resize((8, 8), Image.BILINEAR)
        np.testing.assert_allclose(images[i], np.asarray(ref) / 255, atol=1e-6)
    assert TOK.decode(np.concatenate([b["text"] for b in batches])) == [
        caption(i) for i in range(9)
    ]
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.tolist() == [i % NUM_CLASSES for i in range(9)]
    assert src[7]["where"] == f"{tmp_path}/s-1.tar sample sample000007"


def broken_shards(root):
    """Shards: good (4 samples); empty tar; 0-byte file; a tar cut inside its last image;
    one with a sample lacking its image, one lacking a caption, one with bad json."""
    write_wds_shard(str(root / "s-0.tar"), range(4))
    tarfile.open(root / "s-1.tar", "w").close()  # no members
    (root / "s-2.tar").write_bytes(b"")
    write_wds_shard(str(root / "s-3.tar"), range(4, 7))
    data = (root / "s-3.tar").read_bytes()
    last_image = data.rindex(encode(image(6), "JPEG")[:64])
    (root / "s-3.tar").write_bytes(data[: last_image + 100])  # sample 6's image cut short
    with tarfile.open(root / "s-4.tar", "w") as tar:
        add_member(tar, "noimg.txt", b"a caption without an image")
        add_member(tar, "nocap.jpg", encode(image(8), "JPEG"))
        add_member(tar, "badjson.jpg", encode(image(9), "JPEG"))
        add_member(tar, "badjson.json", b"{not json")
        add_member(tar, "ok.jpg", encode(image(10), "JPEG"))
        add_member(tar, "ok.txt", b"fine")
    return f"{root}/s-{{0..5}}.tar"  # s-5.tar does not exist


SAMPLE_REASONS = {
    "sample000006": r"truncated: expected \d+ bytes",
    "noimg": r"no image member \(jpg/jpeg/png/webp\)",
    "nocap": r"no caption",
    "badjson": r"bad json member",
}


def test_broken_shards_and_samples_are_counted(tmp_path, caplog):
    src = open_wds(broken_shards(tmp_path))
    problems = "\n".join(src.problems)
    assert len(src.problems) == 4, problems
    assert re.search(r"s-1\.tar: empty shard \(no samples\)", problems)
    assert re.search(r"s-2\.tar: unreadable or truncated tar \(empty file\)", problems)
    # Cut short: reported, and its samples up to the cut are still indexed.
    assert re.search(r"s-3\.tar: unreadable or truncated tar after 3 samples", problems)
    assert re.search(r"s-5\.tar: shard file does not exist", problems)
    assert sum("Skipping part of wds:" in r.getMessage() for r in caplog.records) == 4
    assert len(src) == 4 + 3 + 4
    keys = [src._keys[i] for i in range(len(src))]
    for key, reason in SAMPLE_REASONS.items():
        if key != "nocap":  # a missing caption is found by the pipeline's caption check
            with pytest.raises(BadRecord, match=rf"s-\d\.tar sample {key}: {reason}"):
                src[keys.index(key)]
    loader = pipeline.make_train_loader(src, batch_size=2, seed=0, tokenizer=TOK, image_size=8)
    it = iter(loader)
    assert it.skipped == 4  # the shards, counted at open
    ids = np.concatenate([next(it)["id"] for _ in range(14)])  # 4 epochs of 7 good samples
    assert set(ids.tolist()) == {0, 1, 2, 3, 4, 5, 10} and 4 + 3 * 4 <= it.skipped <= 4 + 4 * 4
    it.close()
    passes = pipeline.make_eval_batches(src, batch_size=4, tokenizer=TOK, image_size=8)
    assert sum(len(b["id"]) for b in passes) == 7 and passes.skipped == 4


def test_strict_mode_names_the_shard_and_sample(tmp_path):
    pattern = broken_shards(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"s-1\.tar: empty shard \(no samples\) \(and 3 more\) "
        r"\[data\.strict=True\]",
    ):
        open_wds(pattern, strict=True)
    with pytest.raises(ValueError, match=r"s-3\.tar: unreadable or truncated tar after 3 "):
        open_wds(f"{tmp_path}/s-3.tar", strict=True)
    src = open_wds(f"{tmp_path}/s-4.tar", strict=True)
    with pytest.raises(BadRecord, match=rf"s-4\.tar sample noimg: {SAMPLE_REASONS['noimg']}"):
        list(
            pipeline.make_eval_batches(
                src, batch_size=4, tokenizer=TOK, image_size=8, options={"strict": True}
            )
        )


def test_label_key_picks_a_member_or_json_field(tmp_path):
    with tarfile.open(tmp_path / "l.tar", "w") as tar:
        add_member(tar, "a.jpg", encode(image(0), "JPEG"))
        add_member(tar, "a.json", b'{"caption": "x", "label": 2, "fine": 1}')
        add_member(tar, "a.fine", b"4")
    assert open_wds(f"{tmp_path}/l.tar")[0]["label"] == 2
    assert open_wds(f"{tmp_path}/l.tar", label_key="fine")[0]["label"] == 4
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        add_member(tar, "b.jpg", encode(image(0), "JPEG"))
        add_member(tar, "b.json", b'{"caption": "x", "fine": 5}')
    (tmp_path / "m.tar").write_bytes(data.getvalue())
    assert open_wds(f"{tmp_path}/m.tar", label_key="fine")[0]["label"] == 5


AUDIO_RATE = 8000


def wav(i: int) -> bytes:
    """A 0.1 s tone of 200 * (i + 1) Hz at AUDIO_RATE, WAV-encoded."""
    t = np.arange(AUDIO_RATE // 10) / AUDIO_RATE
    buf = io.BytesIO()
    soundfile.write(buf, 0.5 * np.sin(2 * np.pi * 200 * (i + 1) * t), AUDIO_RATE, format="WAV")
    return buf.getvalue()


def audio_shard(path, ids, *, members=None):
    """One tar of samples s{i}: .jpg, .txt, .wav, .json {"caption", "lang"} (for sample i,
    only the extensions ``members.get(i)`` when given; b"" for an "empty EXT" entry)."""
    with tarfile.open(path, "w") as tar:
        for i in ids:
            data = {
                "jpg": encode(image(i), "JPEG"),
                "txt": caption(i).encode(),
                "wav": wav(i),
                "json": json.dumps({"caption": f"json {caption(i)}", "lang": "en"}).encode(),
            }
            for ext in (members or {}).get(i, data):
                name = ext.removeprefix("empty ")
                add_member(tar, f"s{i}.{name}", b"" if ext.startswith("empty") else data[name])
    return str(path)


REQUESTS = (
    FieldRequest("image", None, True),
    FieldRequest("text", None, False),
    FieldRequest("audio", "wav", True),
    FieldRequest("lang", None, False),  # no .lang member: the json field
    FieldRequest("depth", "depth.png", True),  # no such member: not served
)


def test_requests_serve_members_by_extension_and_json_fields(tmp_path):
    src = open_wds(audio_shard(tmp_path / "a-0.tar", range(3)), requests=REQUESTS)
    assert src.provides == {"image", "text", "audio", "lang"}
    assert src.available_fields == ["jpg", "json", "txt", "wav"]
    record = src[2]
    assert set(record) == {"image", "text", "audio", "lang", "label", "id", "where"}
    assert record["image"] == encode(image(2), "JPEG") and record["audio"] == wav(2)
    assert record["text"] == caption(2) and record["lang"] == "en" and record["label"] == -1
    wave, rate = soundfile.read(io.BytesIO(record["audio"]))
    assert rate == AUDIO_RATE and wave.shape == (AUDIO_RATE // 10,)
    assert "requests=(FieldRequest(key='image', name=None, binary=True), " in repr(src)
    assert repr(src) == repr(open_wds(f"{tmp_path}/a-0.tar", requests=REQUESTS))
    legacy = open_wds(f"{tmp_path}/a-0.tar")
    assert legacy.provides == {"image", "caption"}
    assert set(legacy[2]) == {"image", "caption", "label", "id", "where"}
    assert legacy[2]["caption"] == caption(2).encode()
    assert repr(legacy) == f"WdsSource('{tmp_path}/a-0.tar', shards=1, samples=3)"


def test_a_text_request_falls_back_to_the_json_caption(tmp_path):
    shard = audio_shard(tmp_path / "j.tar", [0, 1], members={0: ["jpg", "json"], 1: ["jpg"]})
    src = open_wds(shard, requests=REQUESTS)
    assert src.provides == {"image", "text", "lang"}
    assert src[0]["text"] == f"json {caption(0)}"
    with pytest.raises(BadRecord, match=r"sample s1: no 'txt' member nor json field 'caption'"):
        src[1]
    # A binary request reads members only; a member seen nowhere is not served.
    binary = [FieldRequest("text", None, True), FieldRequest("audio", "wav", True)]
    assert open_wds(shard, requests=binary).provides == frozenset()


@pytest.mark.parametrize(
    "members, reason",
    [
        (["jpg", "txt"], r"no 'wav' member"),
        (["jpg", "txt", "empty wav"], r"empty 'wav' member"),
        (["txt", "wav"], r"no image member \(jpg/jpeg/png/webp\)"),
        (["jpg", "empty txt", "wav"], r"empty 'txt' member"),
    ],
)
def test_a_sample_missing_a_requested_member_names_it(tmp_path, members, reason):
    shard = audio_shard(tmp_path / "m.tar", [0, 1], members={1: members})
    src = open_wds(shard, requests=REQUESTS[:3])
    assert src.provides == {"image", "text", "audio"} and src[0]["audio"] == wav(0)
    with pytest.raises(BadRecord, match=rf"m\.tar sample s1: {reason}"):
        src[1]


def test_a_tar_cut_inside_a_header_is_a_counted_problem(tmp_path):
    """tarfile stops quietly at a header cut short; the source reports the shard (and the
    loader counts it in data/skipped) instead of silently dropping its remaining samples."""
    path = write_wds_shard(str(tmp_path / "cut.tar"), range(8))
    with tarfile.open(path) as tar:
        header = next(m for m in tar.getmembers() if m.name.startswith("sample000005")).offset
    with open(path, "r+b") as f:
        f.truncate(header + 100)  # inside the 512-byte header block
    src = WdsSource(path, label_key=None)
    assert len(src) == 5
    assert len(src.problems) == 1 and "truncated tar: a header is cut short" in src.problems[0]
    it = iter(pipeline.make_train_loader(src, batch_size=2, seed=0, tokenizer=TOK, image_size=8))
    next(it)
    assert it.skipped == 1
