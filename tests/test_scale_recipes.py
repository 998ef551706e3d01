"""Paper-scale SigLIP recipes (configs/siglip.py:B16, :L16_384, ...): every variant
validates once its data and tokenizer are set, builds the released models' architecture
(parameter counts of the published checkpoints), and names the keys it requires; the
abstract train state that experiments/scale_plan.py compiles against."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from multimodal_ssl import config as config_lib
from multimodal_ssl import scale_recipes
from multimodal_ssl.losses.objectives import make_objective
from multimodal_ssl.models.towers import build_model
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import make_mesh
from multimodal_ssl.train_state import abstract_state, init_state

SIGLIP = str(Path(__file__).resolve().parents[1] / "configs" / "siglip.py")
VOCAB = 32_000  # big_vision's c4_en SentencePiece model, used by the English SigLIP models


def _paper(arg):
    config = load_recipe(SIGLIP, arg)
    config.data.train = "wds:/data/webli/{00000..00009}.tar"
    config.data.tokenizer = "sentencepiece:/data/c4_en.model"
    return config


@pytest.mark.parametrize("arg", scale_recipes.variant_names())
def test_every_variant_validates(arg):
    config = _paper(arg)
    config_lib.validate(config)
    model, res = scale_recipes.parse_variant(arg)
    assert config.data.image_size % scale_recipes.MODELS[model].patch == 0
    assert 0 <= res - config.data.image_size < scale_recipes.MODELS[model].patch
    assert config.batch_size == 32_768 and config.model.dtype == "bfloat16"
    assert config.total_steps * config.batch_size >= scale_recipes.EXAMPLES_SEEN


# Parameter counts of the released SigLIP checkpoints (model cards), in millions.
@pytest.mark.parametrize(
    "arg, millions, tokens",
    [("B16", 203, 196), ("L16", 652, 256), ("So400m14", 877, 256), ("So400m14_384", 878, 729)],
)
def test_variant_builds_the_released_architecture(arg, millions, tokens):
    config = _paper(arg)
    model = build_model(config, VOCAB)
    size, length = config.data.image_size, config.data.max_text_len
    inputs = {
        "image": jnp.zeros((1, size, size, 3), jnp.float32),
        "text": jnp.zeros((1, length), jnp.int32),
    }
    params = jax.eval_shape(lambda r: model.init(r, inputs), jax.random.key(0))["params"]
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params)) + 2  # + t, b
    assert round(count / 1e6) == millions
    # scanned layers, the patch grid of the released checkpoint, no image head
    pos = params["img"]["pos_embedding"].shape
    assert pos == (1, tokens, config.model.embed_dim)
    depth = params["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"]
    assert depth.shape[0] == {"B16": 12, "L16": 24}.get(arg, 27)
    assert "head" not in params["img"] and "head" in params["txt"]


def test_unset_data_and_tokenizer_are_named():
    config = load_recipe(SIGLIP, "L16_384")
    with pytest.raises(ValueError) as e:
        config_lib.validate(config)
    message = str(e.value)
    assert message.startswith("config.data.tokenizer and config.data.train: required")
    assert "--config.data.tokenizer=sentencepiece:" in message
    config.data.tokenizer = "sentencepiece:/data/c4_en.model"
    with pytest.raises(ValueError, match=r"^config\.data\.train: required by this recipe"):
        config_lib.validate(config)


@pytest.mark.parametrize("arg", ["B16_512", "B16_", "H14", "b16"])
def test_unknown_paper_variant_lists_the_known_ones(arg):
    with pytest.raises(ValueError, match="B16_256, B16_384, L16"):
        scale_recipes.parse_variant(arg)


def test_abstract_state_is_the_state_init_state_makes():
    config = load_recipe(SIGLIP, "tiny")
    config.mesh.data, config.mesh.fsdp = 2, 4
    config.sharding.fsdp_min_size = 0
    mesh = make_mesh(config.mesh, jax.devices())
    model = build_model(config, 257)
    objective = make_objective(config.loss, tuple(model.towers))
    tx, _ = make_optimizer(config.optim, config.total_steps)
    size, length = config.data.image_size, config.data.max_text_len
    one = {
        "image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        "text": jax.ShapeDtypeStruct((1, length), jnp.int32),
    }
    abstract = abstract_state(model, objective, tx, config, mesh, one)
    state = jax.eval_shape(lambda: init_state(model, objective, tx, config, mesh, one))  # traced
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (s.shape, s.dtype) and a.sharding.mesh == mesh
    specs = [str(a.sharding.spec) for a in jax.tree.leaves(abstract.params)]
    assert any("fsdp" in spec for spec in specs)
