"""Symile (Saporta et al., NeurIPS 2024): image, text and audio of ``generated:shapes``
bound by their multilinear inner product (``multimodal_ssl/losses/symile.py``), each
modality the anchor in turn. The towers, data and evals of configs/imagebind.py without
depth.

    python -m multimodal_ssl.main --config=configs/symile.py --workdir=/tmp/symile
    python -m multimodal_ssl.main --config=configs/symile.py:tiny --workdir=/tmp/tiny

Variants (comma-separated): ``tiny`` (seconds; tests), ``n_squared`` (every combination
of the other modalities' rows as negatives, B^2 per anchor row, over the device ring:
``loss.impl=ring``). Default: the O(n) shuffled negatives.
"""

import math
import os

import ml_collections

from multimodal_ssl.config import set_towers
from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe

MODALITIES = ("image", "text", "audio")
VARIANTS = ("tiny", "n_squared")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = [v for v in (arg or "").split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"configs/symile.py: unknown variant(s) {unknown}; known: {VARIANTS}")
    base = "tiny" if "tiny" in variants else None
    config = load_recipe(os.path.join(os.path.dirname(__file__), "imagebind.py"), base)
    set_towers(config, {m: config.model.towers[m].to_dict() for m in MODALITIES})
    del config.data.pp["depth"]
    for name in [
        n for n, e in config.evals.items() if "depth" in (e.get("query"), e.get("candidates"))
    ]:
        del config.evals[name]

    # A multilinear product of three unit vectors is small (|MIP| <= 1, ~d^-1 at random),
    # so the scale starts higher than CLIP's.
    config.loss = objective_config("symile", negatives="n", t_init=math.log(30.0))
    if "n_squared" in variants:
        config.loss.negatives = "n_squared"
        config.loss.impl = "ring"
    return config
