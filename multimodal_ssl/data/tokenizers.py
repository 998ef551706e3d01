"""Tokenizers: text -> fixed-length int32 id rows, padded on the right.

The text tower pools the *last* position by default (SigLIP / big_vision convention,
no attention mask), so every row is right-padded with ``pad_id`` to exactly
``max_len``: the last position is then a pad token (or the last text token when the
text fills the row), and full self-attention carries the text to it.

Known specs for :func:`get_tokenizer`:
  ``bytes``  UTF-8 bytes, id = byte + 1 (0 = pad); no files needed.
New kinds subclass :class:`Tokenizer` and register a factory with
:func:`register_tokenizer`.
"""

from __future__ import annotations

import abc
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
    """The tokenizer named by ``spec`` ("bytes"; later "sentencepiece:PATH", ...)."""
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
