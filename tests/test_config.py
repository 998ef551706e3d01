"""Config schema: recipes validate; bad keys and values fail naming the key."""

from pathlib import Path

import ml_collections
import pytest

from multimodal_ssl import config as config_lib
from multimodal_ssl.recipes import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ["siglip.py", "clip.py", "siglip2.py"]


def _recipe(name, arg=None):
    return load_recipe(str(CONFIGS / name), arg)


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_recipes_validate(name, arg):
    config_lib.validate(_recipe(name, arg))


def test_clip_is_siglip_with_softmax():
    siglip, clip = _recipe("siglip.py"), _recipe("clip.py")
    assert (siglip.loss.name, clip.loss.name) == ("sigmoid", "softmax")
    assert siglip.model.image == clip.model.image


def test_unknown_recipe_variant():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        _recipe("siglip.py", "huge")


def _mutate(path, value):
    """The tiny recipe with ``path`` set to ``value``, via a plain dict (ConfigDict
    itself refuses type changes at assignment; config files may build any dict)."""
    tree = _recipe("siglip.py", "tiny").to_dict()
    *parents, leaf = path.split(".")
    node = tree
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("optim.lrr", 1e-3, r"config\.optim\.lrr: unknown key; valid keys here are \[.*'lr'"),
        ("trian_steps", 5, r"config\.trian_steps: unknown key"),
        ("loss.impl", "rign", r"config\.loss\.impl: 'rign' is not one of"),
        ("loss.name", "triplet", r"config\.loss\.name: 'triplet' is not one of"),
        ("optim.name", "sgdd", r"config\.optim\.name: 'sgdd'"),
        ("optim.schedule", "linear", r"config\.optim\.schedule: 'linear'"),
        ("batch_size", 0, r"config\.batch_size: must be > 0"),
        ("total_steps", "ten", r"config\.total_steps: expected int, got str"),
        ("optim.lr", -1.0, r"config\.optim\.lr: must be > 0"),
        ("model.dtype", "float16", r"config\.model\.dtype: 'float16'"),
        ("mesh.data", 0, r"config\.mesh\.data: must be a positive int or -1"),
        ("mesh.pipeline", 2, r"config\.mesh\.pipeline: unknown key"),
        ("model.image.pooling", "map", r"towers\.image\.pooling \(alias config\.model\.image"),
        ("model.text.widht", 64, r"towers\.text\.widht \(alias config\.model\.text\.widht\)"),
        ("evals.zeroshot.every", 5, r"config\.evals\.zeroshot\.every: unknown key"),
        ("evals.zeroshot.type", "knn9", r"config\.evals\.zeroshot\.type"),
        ("evals.zeroshot.every_steps", 0, r"config\.evals\.zeroshot\.every_steps: must be an int"),
        ("evals.retrieval.data", "", r"config\.evals\.retrieval\.data: required source spec"),
        ("checkpoint.keep", 0, r"config\.checkpoint\.keep: must be > 0"),
    ],
)
def test_validation_names_the_bad_key(path, value, message):
    config = _mutate(path, value)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_two_rest_axes_rejected():
    config = _recipe("siglip.py", "tiny")
    config.mesh.fsdp = -1
    with pytest.raises(ValueError, match=r"config\.mesh: at most one axis may be -1"):
        config_lib.validate(config)


def test_int_accepted_for_float_field():
    config = _recipe("siglip.py", "tiny")
    config.optim.grad_clip = 1
    config_lib.validate(config)
