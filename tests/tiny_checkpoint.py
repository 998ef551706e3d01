"""A tiny SigLIP-like two-tower checkpoint in the big_vision ``.npz`` layout, at the tiny
recipe's sizes (16 px images, patch 8; 16 tokens, byte vocabulary), for tests that import
weights (LiT, evaluate/embed ``--pretrained``)."""

import jax
import jax.numpy as jnp
import numpy as np

from multimodal_ssl.convert import save_npz
from multimodal_ssl.models import TwoTower

TOWER = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2, "pool": "map"}


def write_tiny_npz(path: str, *, seed: int = 0, std: float = 0.3) -> dict:
    """Writes random N(0, std) weights (no initialiser compiled) to ``path``; returns them
    as a numpy param tree."""
    model = TwoTower(
        image={**TOWER, "patch_size": 8, "num_classes": None},
        text={**TOWER, "vocab_size": 257, "max_len": 16},
        embed_dim=32,
    )
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16), jnp.int32)
    )["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, std, s.shape).astype(np.float32), shapes)
    save_npz(params, path)
    return params
