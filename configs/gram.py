"""GRAM (Cicchetti et al., ICLR 2025): image, text, depth and audio of
``generated:shapes`` aligned at once by the volume of the parallelotope their embeddings
span (``multimodal_ssl/losses/gram.py``), with text as the anchor as in the paper. The
towers, data and evals of configs/imagebind.py.

    python -m multimodal_ssl.main --config=configs/gram.py --workdir=/tmp/gram
    python -m multimodal_ssl.main --config=configs/gram.py:tiny --workdir=/tmp/tiny

Variants: ``tiny`` (seconds; tests). The loss is dense (``[B, B]`` volumes).
"""

import os

import ml_collections

from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/gram.py: unknown variant {arg!r}; known: 'tiny'")
    config = load_recipe(os.path.join(os.path.dirname(__file__), "imagebind.py"), arg)
    config.loss = objective_config("gram", anchor="text")  # tau = 0.07 (t = log 1/0.07)
    return config
