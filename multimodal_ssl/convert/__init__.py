"""Import pretrained two-tower (SigLIP) weights into our params and model config.

``load_checkpoint(path)``: a transformers folder (``config.json`` +
``model.safetensors``) or a big_vision ``.npz`` -> :class:`Checkpoint`;
``checkpoint_tokenizer(path, max_len)``: the tokenizer shipped in such a folder.
"""

from __future__ import annotations

import os

from multimodal_ssl.convert.big_vision import load_npz, save_npz
from multimodal_ssl.convert.common import Checkpoint, check_params
from multimodal_ssl.convert.hf import is_hf_dir, load_hf
from multimodal_ssl.convert.tokenizer import checkpoint_tokenizer

__all__ = [
    "Checkpoint",
    "check_params",
    "checkpoint_tokenizer",
    "load_checkpoint",
    "load_hf",
    "load_npz",
    "save_npz",
]


def load_checkpoint(path: str) -> Checkpoint:
    """Dispatches on the path: a folder with ``config.json`` -> :func:`load_hf`, a
    ``.npz`` file -> :func:`load_npz`; anything else is a ValueError naming it."""
    path = os.path.expanduser(path)
    if is_hf_dir(path):
        return load_hf(path)
    if os.path.isfile(path) and path.endswith(".npz"):
        return load_npz(path)
    raise ValueError(
        f"{path}: not a transformers SigLIP folder (with config.json) nor a big_vision .npz"
    )
