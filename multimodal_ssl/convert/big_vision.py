"""big_vision two-tower ``.npz`` checkpoints <-> our params.

big_vision (``models/proj/image_text/two_towers.py``) saves its param tree flattened
with ``/``: ``params/img/...`` (``vit``), ``params/txt/...`` (``text_transformer``),
``params/t`` and ``params/b`` (shape ``[1]``). Its module names are ours (``embedding``,
``pos_embedding``, ``Transformer/encoderblock_{i}``, ``MAPHead_0``, ``Encoder_0``,
``Embed_0``, ``head``), so import is an unflatten plus: dropping the ``params/`` prefix,
splitting ``scan``-ed encoders (one stacked ``encoderblock``) into ``encoderblock_{i}``,
and reshaping ``t``/``b`` to scalars. big_vision's MLPs use the tanh GELU and its text
tower pools the last position by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from multimodal_ssl.convert.common import Checkpoint, checkpoint_from_params, flatten, nest

PREFIX = "params/"


def load_npz(path: str, *, text_pool: str = "last") -> Checkpoint:
    """Converts the big_vision two-tower checkpoint at ``path`` (``.npz``).

    Keys may carry big_vision's ``params/`` prefix or none. ``text_pool`` is the text
    tower's pooling when it has no MAP head (the file does not record it; big_vision's
    SigLIP uses ``"last"``). Raises ValueError naming the file on anything unexpected.
    """
    with np.load(path, allow_pickle=False) as data:
        flat = {k.removeprefix(PREFIX): data[k] for k in data.files}
    others = sorted(k for k in flat if k.split("/")[0] not in ("img", "txt", "t", "b"))
    if others:
        raise ValueError(f"{path}: unexpected arrays {others[:10]} (expected img/, txt/, t, b)")
    return checkpoint_from_params(nest(flat), path, gelu_approximate=True, text_pool=text_pool)


def save_npz(params: Mapping[str, Any], path: str) -> None:
    """Writes our image/text ``params`` as a big_vision two-tower ``.npz`` (``params/...``
    keys, ``t``/``b`` of shape ``[1]``), loadable by big_vision and by :func:`load_npz`."""
    flat = {}
    for key, value in flatten(params).items():
        value = np.asarray(value, np.float32)
        flat[PREFIX + key] = value.reshape(1) if key in ("t", "b") else value
    np.savez(path, **flat)
