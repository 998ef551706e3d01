"""DCL (Yeh et al., ECCV 2022): configs/imagebind.py (image, text, depth, audio on
``generated:shapes``, every modality against the image) trained with decoupled
contrastive learning, the softmax loss with the positive out of the denominator
(``multimodal_ssl/losses/dcl.py``), over the device ring.

    python -m multimodal_ssl.main --config=configs/dcl.py --workdir=/tmp/dcl
    python -m multimodal_ssl.main --config=configs/dcl.py:tiny --workdir=/tmp/tiny

Variants: those of configs/imagebind.py (``tiny``, ``all_pairs``).
"""

import math
import os

import ml_collections

from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "imagebind.py"), arg)
    config.loss = objective_config(
        "dcl", impl="ring", pairs=config.loss.pairs, t_init=math.log(1 / 0.07)
    )
    return config
