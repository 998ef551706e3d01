"""CLIP: the SigLIP recipe (configs/siglip.py) trained with the softmax (InfoNCE) loss.

    python -m multimodal_ssl.main --config=configs/clip.py --workdir=/tmp/clip
    python -m multimodal_ssl.main --config=configs/clip.py:tiny --workdir=/tmp/tiny

Variants: those of configs/siglip.py.
"""

import math
import os

import ml_collections

from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "siglip.py"), arg)
    config.loss.name = "softmax"
    config.model.t_init = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    return config
