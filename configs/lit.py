"""LiT: locked-image text tuning (Zhai et al., 2022, arXiv 2111.07991) with the SigLIP loss.

The image tower (architecture and weights) comes from a pretrained checkpoint and is
frozen: no gradient is computed for it and it gets no optimizer state. The text tower
(sizes from configs/siglip.py) is trained from scratch to match it, with ``t`` and ``b``.

    python -m multimodal_ssl.main --config=configs/lit.py --workdir=/tmp/lit \\
        --config.model.init_from=/path/to/siglip --config.data.image_size=224

``model.init_from``: a transformers SigLIP folder (config.json + model.safetensors) or a
big_vision two-tower ``.npz``; ``data.image_size`` must be the tower's input size (the run
stops at start with the size to use otherwise). Variants: those of configs/siglip.py.
"""

import os

import ml_collections

from multimodal_ssl.recipes import load_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "siglip.py"), arg)
    config.model.init_towers = "img"  # needs --config.model.init_from=PATH
    config.optim.freeze = r"^img/"  # the whole image tower: locked
    return config
