"""SLIP (Mu et al., 2022): CLIP plus SimCLR on two augmented views of each image,
``L = L_CLIP + L_SimCLR``, as a mixture of two objectives (``loss.name = "mix"``).

    python -m multimodal_ssl.main --config=configs/slip.py --workdir=/tmp/slip
    python -m multimodal_ssl.main --config=configs/slip.py:tiny --workdir=/tmp/tiny

The SigLIP recipe's towers, data (``generated:shapes``), optimizer and evals; the
pipeline reads each image twice with independent random crops (``image`` for CLIP and
SimCLR, ``image_view2`` for SimCLR: ``data.views``); both go through the image tower,
then SimCLR's MLP head (``loss.terms.simclr.mlp_dim``). Weights:
``--config.loss.terms.simclr.weight=0.5``. Variants: ``tiny`` (seconds; tests).
"""

import math
import os

import ml_collections

from multimodal_ssl.losses.mixture import mix_config, mix_term
from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/slip.py: unknown variant {arg!r}; known: 'tiny'")
    config = load_recipe(os.path.join(os.path.dirname(__file__), "siglip.py"), arg)
    config.data.views = {"image_view2": "image"}
    # Small random shifts: the captions name positions, so crops stay mild.
    size = config.data.image_size
    config.data.pp_train = f"resize({size + size // 8})|random_crop|value_range(-1, 1)"
    tiny = arg == "tiny"
    config.loss = mix_config(
        clip=mix_term("softmax", impl=config.loss.impl, t_init=math.log(1 / 0.07)),
        simclr=mix_term(
            "simclr",
            views="image-image_view2",
            temperature=0.1,
            mlp_dim=32 if tiny else 512,
            out_dim=16 if tiny else 128,
        ),
    )
    return config
