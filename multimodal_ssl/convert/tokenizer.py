"""The tokenizer shipped in a checkpoint folder, on top of ``data.tokenizers``.

- ``spiece.model`` (SigLIP's SentencePiece, as transformers' ``SiglipTokenizer`` and
  big_vision's ``tokenize(eos="sticky", pad_value=1)`` use it): the text is
  canonicalised (lower-cased, ASCII punctuation removed, whitespace collapsed), ``</s>``
  appended and kept last when truncating, and rows are padded with the folder's
  ``pad_token`` (``</s>``, not the model's ``<pad>``).
- ``tokenizer.json``: ``data.tokenizers.HuggingFaceTokenizer`` (the file's own
  normaliser and post-processor).
"""

from __future__ import annotations

import json
import os
import re
import string
from typing import Any

from multimodal_ssl.data.tokenizers import SentencePieceTokenizer, Tokenizer, get_tokenizer

SPIECE_FILE = "spiece.model"
JSON_FILE = "tokenizer.json"
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str, lower: bool = True) -> str:
    """big_vision's / transformers' SigLIP text canonicalisation."""
    text = (text.lower() if lower else text).translate(_PUNCTUATION)
    return re.sub(r"\s+", " ", text).strip()


def _special_tokens(folder: str) -> dict[str, Any]:
    """``pad_token``, ``do_lower_case``, ... from the folder's tokenizer config files
    (the first file that sets a key wins); tokens as strings."""
    found: dict[str, Any] = {}
    for name in _CONFIG_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                for key, value in json.load(f).items():
                    if isinstance(value, dict) and "content" in value:
                        value = value["content"]
                    found.setdefault(key, value)
    return found


class SiglipSentencePiece(SentencePieceTokenizer):
    """:class:`SentencePieceTokenizer` with SigLIP's canonicalisation and pad token."""

    def __init__(self, path: str, max_len: int, *, lower: bool = True, pad_token: str = "</s>"):
        self.lower = lower
        self.pad_token = pad_token
        super().__init__(path, max_len)

    def _load(self) -> None:  # also runs on unpickling (grain workers)
        super()._load()
        pad = self._sp.piece_to_id(self.pad_token)
        if self._sp.id_to_piece(pad) != self.pad_token:
            raise ValueError(f"{self.path}: no pad token {self.pad_token!r} in the vocabulary")
        self.pad_id = pad

    def _ids(self, text: str) -> list[int]:
        return super()._ids(canonicalize(text, self.lower))

    def __repr__(self) -> str:
        return f"SiglipSentencePiece({self.path!r}, max_len={self.max_len})"


def checkpoint_tokenizer(path: str, max_len: int) -> Tokenizer | None:
    """The tokenizer in checkpoint folder ``path`` (``spiece.model`` preferred, then
    ``tokenizer.json``), producing rows of ``max_len``; None if it has neither (or
    ``path`` is a file, e.g. a big_vision ``.npz``)."""
    if not os.path.isdir(path):
        return None
    if os.path.isfile(spm := os.path.join(path, SPIECE_FILE)):
        special = _special_tokens(path)
        return SiglipSentencePiece(
            spm,
            max_len,
            lower=bool(special.get("do_lower_case", True)),
            pad_token=special.get("pad_token", "</s>"),
        )
    if os.path.isfile(js := os.path.join(path, JSON_FILE)):
        return get_tokenizer(f"hf:{js}", max_len)
    return None
