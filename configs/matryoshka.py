"""Matryoshka embeddings (Kusupati et al., 2022): the SigLIP loss applied at the nested
prefixes 16/32/64/128 of the embeddings, so that every prefix is usable on its own.

    python -m multimodal_ssl.main --config=configs/matryoshka.py --workdir=/tmp/mrl
    python -m multimodal_ssl.main --config=configs/matryoshka.py:tiny --workdir=/tmp/tiny
    python -m multimodal_ssl.main --config=configs/matryoshka.py:slip --workdir=/tmp/mrl_slip

The SigLIP recipe otherwise; zero-shot and retrieval also report every prefix
(``eval/zeroshot/d16/zeroshot_top1``, ...; ``evals.<name>.dims``). Variants: ``tiny``
(seconds; tests); ``slip`` and ``slip_tiny``: a mixture of Matryoshka-SigLIP and SLIP's
SimCLR term on a second augmented image view (``loss.terms.{siglip,simclr}``).
"""

import os

import ml_collections

from multimodal_ssl.losses.mixture import mix_config, mix_term
from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe

VARIANTS = ("tiny", "slip", "slip_tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, *VARIANTS):
        raise ValueError(f"configs/matryoshka.py: unknown variant {arg!r}; known: {VARIANTS}")
    tiny = arg in ("tiny", "slip_tiny")
    config = load_recipe(
        os.path.join(os.path.dirname(__file__), "siglip.py"), "tiny" if tiny else None
    )
    dims = (4, 8, 16) if tiny else (16, 32, 64, 128)  # the last is model.embed_dim
    siglip = config.loss
    config.loss = objective_config("matryoshka", dims=dims)
    config.loss.objective = siglip  # the SigLIP recipe's sigmoid loss (ring) at each prefix
    for name in ("zeroshot", "retrieval"):
        config.evals[name].dims = dims[:-1]  # the full width is reported as before
    if arg in ("slip", "slip_tiny"):
        size = config.data.image_size
        config.data.views = {"image_view2": "image"}
        config.data.pp_train = f"resize({size + size // 8})|random_crop|value_range(-1, 1)"
        matryoshka = config.loss
        matryoshka.weight = 1.0
        config.loss = mix_config(
            siglip=matryoshka,
            simclr=mix_term("simclr", mlp_dim=32 if tiny else 512, out_dim=16 if tiny else 128),
        )
    return config
