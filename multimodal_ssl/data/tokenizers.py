"""Tokenizers: text -> fixed-length int32 id rows, padded on the right.

The text tower pools the *last* position by default (SigLIP / big_vision convention,
no attention mask), so every row is right-padded with ``pad_id`` to exactly
``max_len``: the last position is then a pad token (or the last text token when the
text fills the row), and full self-attention carries the text to it.

Known specs for :func:`get_tokenizer`:
  ``bytes``               UTF-8 bytes, id = byte + 1 (0 = pad); no files needed.
  ``sentencepiece:PATH``  a SentencePiece ``.model`` file (e.g. SigLIP's / T5's): the
                          model's ids plus its EOS (kept when truncating, big_vision's
                          ``eos="sticky"``); padded with the model's pad id, or with EOS
                          when it has none (SigLIP's convention).
  ``hf:PATH``             a HuggingFace ``tokenizer.json`` (``tokenizers`` package): its
                          normaliser, pre-tokeniser, model and post-processor (e.g. CLIP's
                          BOS/EOS, kept when truncating); padded with its configured pad
                          id, else the id of its pad token, else 0.
New kinds subclass :class:`Tokenizer` and register a factory with
:func:`register_tokenizer`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence

import numpy as np


class Tokenizer(abc.ABC):
    """Maps texts to ``int32 [n, max_len]`` rows and back.

    Subclasses implement ``vocab_size``, ``_ids`` (one text -> ids, unpadded, not
    truncated) and ``_text`` (ids without pads -> text); they may override
    ``_truncate``. Padding, truncation and input checks live here.
    """

    pad_id: int = 0

    def __init__(self, max_len: int):
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"max_len: must be an int >= 1, got {max_len!r}")
        self.max_len = max_len

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (including ``pad_id``); ids lie in [0, vocab_size)."""

    @abc.abstractmethod
    def _ids(self, text: str) -> list[int]:
        """The ids of ``text``, neither truncated nor padded."""

    @abc.abstractmethod
    def _text(self, ids: list[int]) -> str:
        """The text of ``ids`` (no pad ids among them)."""

    def _truncate(self, ids: list[int]) -> list[int]:
        return ids[: self.max_len]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """texts: n strings -> int32 [n, max_len], truncated to max_len, right-padded."""
        if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
            raise ValueError(
                f"texts: expected a list of str, got {type(texts).__name__} {texts!r:.80}"
            )
        out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"texts[{row}]: expected str, got {type(text).__name__} {text!r:.80}"
                )
            ids = self._truncate(self._ids(text))
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """ids: int [n, L] (or one row [L]) -> n texts; pad ids are dropped."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids: expected int [n, L], got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"ids: must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}"
            )
        return [self._text([int(i) for i in row if i != self.pad_id]) for row in ids]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted by one: id = byte + 1, 0 = pad; vocab_size 257.

    Truncation never splits a multi-byte character: a text longer than ``max_len``
    bytes keeps its longest prefix of whole characters that fits, so ``decode``
    returns exactly a prefix of the input.
    """

    @property
    def vocab_size(self) -> int:
        return 257

    def _ids(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_len:
            return ids
        end = self.max_len
        while end > 0 and (ids[end] - 1) & 0xC0 == 0x80:  # ids[end] continues a character
            end -= 1
        return ids[:end]

    def _text(self, ids: list[int]) -> str:
        return bytes(i - 1 for i in ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(max_len={self.max_len})"


TokenizerFactory = Callable[[str, int], Tokenizer]
_FACTORIES: dict[str, TokenizerFactory] = {}


def register_tokenizer(kind: str) -> Callable[[TokenizerFactory], TokenizerFactory]:
    """Registers ``factory(arg, max_len) -> Tokenizer`` for specs ``"kind[:arg]"``."""

    def decorator(factory: TokenizerFactory) -> TokenizerFactory:
        if kind in _FACTORIES:
            raise ValueError(f"tokenizer kind {kind!r} is already registered")
        _FACTORIES[kind] = factory
        return factory

    return decorator


def get_tokenizer(spec: str, max_len: int) -> Tokenizer:
    """The tokenizer named by ``spec`` ("bytes", "sentencepiece:PATH", "hf:PATH")."""
    if not isinstance(spec, str):
        raise ValueError(f"tokenizer spec: expected a str like 'bytes', got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind not in _FACTORIES:
        raise ValueError(
            f"tokenizer spec {spec!r}: unknown kind {kind!r}; known: {sorted(_FACTORIES)}"
        )
    return _FACTORIES[kind](arg, max_len)


@register_tokenizer("bytes")
def _bytes(arg: str, max_len: int) -> Tokenizer:
    if arg:
        raise ValueError(f"tokenizer spec 'bytes:{arg}': 'bytes' takes no argument")
    return ByteTokenizer(max_len)


def _read_model_file(spec: str, path: str) -> bytes:
    if not path:
        raise ValueError(f"tokenizer spec {spec!r}: expected '{spec.split(':')[0]}:PATH'")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"tokenizer spec {spec!r}: cannot read {path}: {e}") from None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; see the module docstring for EOS and padding."""

    def __init__(self, path: str, max_len: int):
        super().__init__(max_len)
        self.path = path
        self._proto = _read_model_file(f"sentencepiece:{path}", path)
        self._load()

    def _load(self) -> None:
        import sentencepiece  # local: optional dependency of this tokenizer only

        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"sentencepiece:{self.path}: not a SentencePiece model: {e}") from None
        self.eos_id = self._sp.eos_id()
        pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
        if pad < 0:
            raise ValueError(f"sentencepiece:{self.path}: the model defines neither pad nor EOS")
        self.pad_id = pad

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_sp"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _ids(self, text: str) -> list[int]:
        ids = self._sp.encode(text)
        return ids + [self.eos_id] if self.eos_id >= 0 else ids

    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_len or self.eos_id < 0:
            return ids[: self.max_len]
        return ids[: self.max_len - 1] + [self.eos_id]

    def _text(self, ids: list[int]) -> str:
        return self._sp.decode([i for i in ids if i != self.eos_id])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.path!r}, max_len={self.max_len})"


_PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")


class HuggingFaceTokenizer(Tokenizer):
    """A ``tokenizer.json``; truncation by the ``tokenizers`` library (special tokens of
    the post-processor survive), padding as in the module docstring."""

    def __init__(self, path: str, max_len: int):
        super().__init__(max_len)
        import tokenizers  # local: optional dependency of this tokenizer only

        self.path = path
        raw = _read_model_file(f"hf:{path}", path)
        try:
            self._tok = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the library raises plain Exception
            raise ValueError(f"hf:{path}: not a tokenizers tokenizer.json ({e})") from None
        padding = self._tok.padding
        if padding is not None:
            self.pad_id = padding["pad_id"]
        else:
            ids = [self._tok.token_to_id(t) for t in _PAD_TOKENS]
            self.pad_id = next((i for i in ids if i is not None), 0)
        self._tok.no_padding()
        self._tok.enable_truncation(max_len)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _ids(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def _text(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer({self.path!r}, max_len={self.max_len})"


@register_tokenizer("sentencepiece")
def _sentencepiece(arg: str, max_len: int) -> Tokenizer:
    return SentencePieceTokenizer(arg, max_len)


@register_tokenizer("hf")
def _hf(arg: str, max_len: int) -> Tokenizer:
    return HuggingFaceTokenizer(arg, max_len)
