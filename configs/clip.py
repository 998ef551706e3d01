"""CLIP: the SigLIP recipe (configs/siglip.py) trained with the softmax (InfoNCE) loss.

    python -m multimodal_ssl.main --config=configs/clip.py --workdir=/tmp/clip
    python -m multimodal_ssl.main --config=configs/clip.py:tiny --workdir=/tmp/tiny

Variants: those of configs/siglip.py.
"""

import math
import os

import ml_collections

from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "siglip.py"), arg)
    # CLIP's initial temperature 0.07; same pairs and implementation as the SigLIP recipe.
    config.loss = objective_config(
        "softmax", impl=config.loss.impl, pairs=config.loss.pairs, t_init=math.log(1 / 0.07)
    )
    return config
