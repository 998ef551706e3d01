"""The byte tokenizer: ids, right padding, truncation at character boundaries, errors."""

import numpy as np
import pytest

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
        ("sentencepiece:/x.model", 8, r"unknown kind 'sentencepiece'; known: \['bytes'\]"),
        ("bytes:utf16", 8, r"'bytes' takes no argument"),
        ("bytes", 0, r"max_len: must be an int >= 1, got 0"),
        (None, 8, r"tokenizer spec: expected a str"),
    ],
)
def test_get_tokenizer_errors(spec, max_len, match):
    with pytest.raises(ValueError, match=match):
        tokenizers.get_tokenizer(spec, max_len)
