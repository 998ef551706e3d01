"""Activations stay split by rows under FSDP: inside ``batch_sharded_activations`` the
encoder blocks constrain their rows to the batch axes (experiments/scale_plan.md: without
it XLA kept the global batch's activations on every device), and nothing changes outside."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from multimodal_ssl.models.activation_sharding import (
    Embed,
    batch_sharded_activations,
    constrain_batch,
)
from multimodal_ssl.models.towers import MultiTower
from multimodal_ssl.sharding import batch_sharding, make_mesh

TOWERS = {
    "image": {"type": "vit", "variant": "mu/4", "depth": 2},
    "text": {"type": "text", "variant": "mu", "depth": 2, "vocab_size": 50, "max_len": 8},
}


def _constraints(jaxpr) -> list:
    """Shardings of every sharding_constraint in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "sharding_constraint":
            found.append(eqn.params["sharding"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _constraints(sub)
    return found


def _apply_jaxpr(model, params, inputs, mesh=None):
    def apply(p):
        if mesh is None:
            return model.apply(p, inputs)
        with batch_sharded_activations(batch_sharding(mesh)):
            return model.apply(p, inputs)

    return jax.make_jaxpr(apply)(params).jaxpr


def test_blocks_constrain_rows_to_the_batch_axes_only_inside_the_context():
    mesh = make_mesh({"data": 1, "fsdp": -1, "model": 1}, jax.devices())
    model = MultiTower(towers=TOWERS, embed_dim=16)
    inputs = {"image": jnp.zeros((8, 8, 8, 3)), "text": jnp.zeros((8, 8), jnp.int32)}
    params = jax.eval_shape(model.init, jax.random.key(0), inputs)
    assert _constraints(_apply_jaxpr(model, params, inputs)) == []
    found = _constraints(_apply_jaxpr(model, params, inputs, mesh))
    rows = [s for s in found if s.spec and s.spec[0] == ("data", "fsdp")]
    # per block: input, post-attention residual, attention output, MLP hidden (2 towers x 2
    # blocks), + encoder outputs, the text lookup and the MAP head's attention and MLP
    assert len(rows) >= 4 * 2 * 2 + 2
    assert all(s.mesh == mesh for s in found)
    assert all(d == P.UNCONSTRAINED for s in rows for d in s.spec[1:])
    whole = [s for s in found if s.spec == P()]
    assert len(whole) == 1  # the text embedding table, gathered for the lookup


def test_embed_matches_flax_embed_and_constraints_keep_values():
    ids = jnp.array([[1, 4, 0], [3, 3, 9]], jnp.int32)
    ours, flax_embed = Embed(10, 6, name="Embed_0"), nn.Embed(10, 6, name="Embed_0")
    params = flax_embed.init(jax.random.key(1), ids)
    assert jax.tree.structure(ours.init(jax.random.key(1), ids)) == jax.tree.structure(params)
    mesh = make_mesh({"data": -1, "fsdp": 1, "model": 1}, jax.devices()[:2])

    @jax.jit
    def inside(p, x):
        with batch_sharded_activations(batch_sharding(mesh)):
            return ours.apply(p, x), constrain_batch(x * 2)

    got, doubled = inside(params, ids)
    np.testing.assert_array_equal(got, flax_embed.apply(params, ids))
    np.testing.assert_array_equal(ours.apply(params, ids), flax_embed.apply(params, ids))
    np.testing.assert_array_equal(doubled, ids * 2)
