"""Tokenizers: bytes (ids, right padding, truncation at character boundaries), a
SentencePiece model and a HuggingFace tokenizer.json trained here, errors."""

import io
import pickle

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers as hf

from multimodal_ssl.data import tokenizers


def longest_whole_char_prefix(text: str, max_bytes: int) -> str:
    """Reference: the longest prefix of ``text`` whose UTF-8 encoding fits max_bytes."""
    out = ""
    for ch in text:
        if len((out + ch).encode("utf-8")) > max_bytes:
            break
        out += ch
    return out


def test_ascii_ids_padding_and_round_trip():
    tok = tokenizers.get_tokenizer("bytes", 12)
    assert isinstance(tok, tokenizers.Tokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.max_len) == (257, 0, 12)
    ids = tok.encode(["a red circle", "hi", ""])
    assert ids.dtype == np.int32 and ids.shape == (3, 12)
    np.testing.assert_array_equal(ids[0], [b + 1 for b in b"a red circle"])  # fills the row
    np.testing.assert_array_equal(ids[1], [ord("h") + 1, ord("i") + 1] + [0] * 10)
    np.testing.assert_array_equal(ids[2], np.zeros(12))
    assert tok.decode(ids) == ["a red circle", "hi", ""]
    assert tok.decode(ids[1]) == ["hi"]  # a single row
    assert tok.encode([]).shape == (0, 12)


def test_truncation_keeps_a_prefix():
    tok = tokenizers.ByteTokenizer(5)
    ids = tok.encode(["a large blue square"])
    np.testing.assert_array_equal(ids[0], [b + 1 for b in b"a lar"])
    assert tok.decode(ids) == ["a lar"]


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "a 🟥 square ✓", "\x00\x7f"])
def test_non_ascii_round_trip_and_whole_character_truncation(text):
    full = len(text.encode("utf-8"))
    for max_len in range(1, full + 3):
        tok = tokenizers.ByteTokenizer(max_len)
        ids = tok.encode([text])
        assert ids.shape == (1, max_len) and ids.min() >= 0 and ids.max() < tok.vocab_size
        expected = longest_whole_char_prefix(text, max_len)
        assert tok.decode(ids) == [expected]
        n = len(expected.encode("utf-8"))
        np.testing.assert_array_equal(ids[0, :n], np.frombuffer(expected.encode(), np.uint8) + 1)
        assert np.all(ids[0, n:] == tok.pad_id)


def test_ids_are_bytes_plus_one_below_vocab_size():
    tok = tokenizers.ByteTokenizer(4)
    ascii_rows = np.pad(np.arange(1, 129)[:, None], ((0, 0), (0, 3)))  # each ASCII byte alone
    assert tok.decode(ascii_rows) == [chr(i) for i in range(128)]
    assert tok.encode(["\U0010ffff"]).max() == 0xF4 + 1 < tok.vocab_size  # the top lead byte
    with pytest.raises(ValueError, match=r"ids: must lie in \[0, 257\), got 0\.\.257"):
        tok.decode([[0, 257]])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.encode("a red circle"), r"texts: expected a list of str, got str"),
        (lambda t: t.encode(["ok", 3]), r"texts\[1\]: expected str, got int 3"),
        (lambda t: t.decode([[-1, 2]]), r"ids: must lie in \[0, 257\)"),
        (lambda t: t.decode(np.zeros((1, 2, 3), np.int32)), r"ids: expected int \[n, L\]"),
        (lambda t: t.decode([[1.5]]), r"ids: expected int \[n, L\]"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call(tokenizers.ByteTokenizer(4))


@pytest.mark.parametrize(
    "spec, max_len, match",
    [
        (
            "wordpiece:/x.txt",
            8,
            r"unknown kind 'wordpiece'; known: \['bytes', 'hf', 'sentencepiece'\]",
        ),
        ("sentencepiece:/nope/x.model", 8, r"'sentencepiece:/nope/x.model': cannot read /nope/x"),
        ("sentencepiece:", 8, r"expected 'sentencepiece:PATH'"),
        ("hf:/nope/tokenizer.json", 8, r"'hf:/nope/tokenizer.json': cannot read"),
        ("bytes:utf16", 8, r"'bytes' takes no argument"),
        ("bytes", 0, r"max_len: must be an int >= 1, got 0"),
        (None, 8, r"tokenizer spec: expected a str"),
    ],
)
def test_get_tokenizer_errors(spec, max_len, match):
    with pytest.raises(ValueError, match=match):
        tokenizers.get_tokenizer(spec, max_len)


CORPUS = [
    "a small red circle in the top left",
    "a large blue square at the bottom",
    "two green triangles next to a purple diamond",
    "the photo shows a dog running on the beach",
    "an orange cat sleeps on a blue sofa",
] * 20


def train_sentencepiece(path, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=40,
        model_type="unigram",
        minloglevel=2,
        **options,
    )
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.mark.parametrize("pad_option, expected_pad", [({}, "eos"), ({"pad_id": 3}, 3)])
def test_sentencepiece_ids_eos_padding_and_truncation(tmp_path, pad_option, expected_pad):
    path = train_sentencepiece(tmp_path / "spm.model", **pad_option)
    reference = spm.SentencePieceProcessor(model_file=path)
    eos = reference.eos_id()
    pad = eos if expected_pad == "eos" else expected_pad
    texts = ["a small red circle", "the photo shows a dog running on the beach", ""]
    for max_len in (4, 12, 40):
        tok = tokenizers.get_tokenizer(f"sentencepiece:{path}", max_len)
        assert tok.vocab_size == reference.get_piece_size() and tok.pad_id == pad
        ids = tok.encode(texts)
        assert ids.shape == (3, max_len) and ids.dtype == np.int32
        for row, text in zip(ids, texts, strict=True):
            want = reference.encode(text) + [eos]
            if len(want) > max_len:  # truncated, EOS kept last ("sticky")
                want = want[: max_len - 1] + [eos]
            np.testing.assert_array_equal(row, want + [pad] * (max_len - len(want)))
    tok = tokenizers.get_tokenizer(f"sentencepiece:{path}", 40)
    assert tok.decode(tok.encode(texts)) == texts
    clone = pickle.loads(pickle.dumps(tok))  # grain worker processes receive a pickled copy
    np.testing.assert_array_equal(clone.encode(texts), tok.encode(texts))


def test_sentencepiece_rejects_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "x.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"sentencepiece:.*x\.model: not a SentencePiece model"):
        tokenizers.get_tokenizer(f"sentencepiece:{bad}", 8)


def train_hf_tokenizer(path, padding=False):
    tok = hf.Tokenizer(hf.models.BPE(unk_token="<unk>"))
    tok.normalizer = hf.normalizers.Lowercase()
    tok.pre_tokenizer = hf.pre_tokenizers.Metaspace()
    tok.decoder = hf.decoders.Metaspace()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=80, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = hf.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    if padding:
        tok.enable_padding(pad_id=0, pad_token="<unk>")
    tok.save(str(path))
    return str(path)


@pytest.mark.parametrize("configured_padding", [False, True])
def test_hf_tokenizer_json_matches_the_library(tmp_path, configured_padding):
    path = train_hf_tokenizer(tmp_path / "tokenizer.json", configured_padding)
    pad = 0 if configured_padding else 3  # its configured pad id, else "<pad>"
    texts = ["A small RED circle", "the photo shows a dog running on the beach", ""]
    for max_len in (5, 32):
        tok = tokenizers.get_tokenizer(f"hf:{path}", max_len)
        reference = hf.Tokenizer.from_file(path)
        reference.enable_truncation(max_len)
        reference.enable_padding(length=max_len, pad_id=pad)
        want = np.array([e.ids for e in reference.encode_batch(texts)])
        np.testing.assert_array_equal(tok.encode(texts), want)
        assert tok.pad_id == pad and tok.vocab_size == reference.get_vocab_size()
    ids = tokenizers.get_tokenizer(f"hf:{path}", 5).encode(texts)
    assert ids[1, 0] == 1 and ids[1, -1] == 2  # BOS first, EOS kept when truncating
    tok = tokenizers.get_tokenizer(f"hf:{path}", 32)
    ids = tok.encode(texts[:2])
    assert tok.decode(ids) == [t.lower() for t in texts[:2]] == reference.decode_batch(ids.tolist())
    clone = pickle.loads(pickle.dumps(tok))
    np.testing.assert_array_equal(clone.encode(texts), tok.encode(texts))
