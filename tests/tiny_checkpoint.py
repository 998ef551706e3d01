"""A tiny SigLIP-like two-tower checkpoint in the big_vision ``.npz`` layout, at the tiny
recipe's sizes (16 px images, patch 8; 16 tokens, byte vocabulary), for tests that import
weights (LiT, evaluate/embed ``--pretrained``)."""

import jax
import jax.numpy as jnp
import numpy as np

from multimodal_ssl.convert import save_npz
from multimodal_ssl.losses.objectives import make_objective, objective_config
from multimodal_ssl.models import MultiTower

TOWER = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2, "pool": "map"}


def write_tiny_npz(path: str, *, seed: int = 0, std: float = 0.3) -> dict:
    """Writes random N(0, std) weights (no initialiser compiled) to ``path``; returns them
    as a numpy param tree (the towers' ``img``, ``txt`` and the sigmoid objective's
    ``t``, ``b``, random too)."""
    model = MultiTower(
        towers={
            "image": {"type": "vit", **TOWER, "patch_size": 8, "num_classes": None},
            "text": {"type": "text", **TOWER, "vocab_size": 257, "max_len": 16},
        },
        embed_dim=32,
    )
    inputs = {"image": jnp.zeros((1, 16, 16, 3)), "text": jnp.zeros((1, 16), jnp.int32)}
    objective = make_objective(objective_config("sigmoid"), ("image", "text"))
    shapes = {
        **jax.eval_shape(model.init, jax.random.key(0), inputs)["params"],
        **jax.eval_shape(objective.init_params),
    }
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, std, s.shape).astype(np.float32), shapes)
    save_npz(params, path)
    return params
