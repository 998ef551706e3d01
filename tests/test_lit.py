"""LiT (configs/lit.py): the image tower is imported and frozen (bit-identical after
training, no gradient computed for it: checked in the jaxpr), the text tower trains."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_checkpoint import write_tiny_npz

from multimodal_ssl import pretrained
from multimodal_ssl.builder import Experiment
from multimodal_ssl.config import validate
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.models.layout import scan_layers, unscan_layers
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import to_global
from multimodal_ssl.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A SigLIP-like two-tower npz at the tiny recipe's sizes (16 px images, 16 tokens)."""
    path = str(tmp_path_factory.mktemp("lit") / "siglip.npz")
    return path, write_tiny_npz(path, seed=7, std=0.2)


def lit_config(path, **optim):
    config = load_recipe(str(ROOT / "configs" / "lit.py"), "tiny")
    config.model.init_from = path
    config.evals = {}
    config.optim.update(optim)
    validate(config)
    return config


def abstract_step(config):
    """(abstract train state, jitted step) of ``config``; nothing is compiled."""
    exp = Experiment(config, jax.devices()[:2])
    abstract = jax.eval_shape(exp.init_state)
    return abstract, exp.train_step(abstract), exp.mesh


def batch(config, mesh):
    rng = np.random.default_rng(0)
    n, s, length = config.batch_size, config.data.image_size, config.data.max_text_len
    return to_global(
        {
            "image": rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32),
            "text": rng.integers(1, 257, (n, length)).astype(np.int32),
        },
        mesh,
    )


def equal_trees(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b))


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_lit_trains_text_with_the_imported_image_tower_bit_identical(checkpoint, tmp_path):
    path, ckpt_params = checkpoint
    config = lit_config(path)
    config.total_steps, config.checkpoint.every_steps = 2, 1
    final = train(config, str(tmp_path), devices=jax.devices()[:1])
    assert np.isfinite(final["train/loss"])
    restore = ocp.PyTreeCheckpointer().restore
    saved = [restore(str(tmp_path / "checkpoints" / f"{s}" / "state")) for s in (1, 2)]
    for state in saved:
        assert equal_trees(state["params"]["img"], ckpt_params["img"])
    p1, p2 = (s["params"] for s in saved)
    assert not np.array_equal(p1["txt"]["head"]["kernel"], p2["txt"]["head"]["kernel"])
    assert p1["t"] != p2["t"]
    # No optimizer state for the frozen tower: the state is as large as that of the same
    # optimizer, unfrozen, over the trainable params alone.
    opt_size = sum(np.size(x) for x in jax.tree.leaves(saved[1]["opt_state"]))
    unfrozen = config.optim.copy_and_resolve_references()
    unfrozen.freeze = None
    tx, _ = make_optimizer(unfrozen, config.total_steps)
    trainable = {k: v for k, v in p2.items() if k != "img"}
    expected = sum(np.size(x) for x in jax.tree.leaves(tx.init(trainable)))
    assert expected <= opt_size < expected + 10


def test_no_gradient_is_computed_for_the_frozen_tower(checkpoint):
    """The image tower has one conv (the patch embedding); its backward would add a
    second one (the kernel gradient), as it does when nothing is frozen."""
    counts = {}
    for freeze in (r"^img/", None):
        config = lit_config(checkpoint[0], freeze=freeze)
        abstract, step, mesh = abstract_step(config)
        counts[freeze] = str(step.trace(abstract, batch(config, mesh)).jaxpr).count(
            "conv_general_dilated["
        )
    assert counts == {r"^img/": 1, None: 2}


def test_optimizer_masks_frozen_params():
    """Even when handed gradients for them, frozen params get zero updates and no state."""
    cfg = load_recipe(str(ROOT / "configs" / "lit.py"), "tiny").optim
    params = {"img": {"w": np.ones((3, 4), np.float32)}, "txt": {"w": np.ones(5, np.float32)}}
    tx, _ = make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert any("['txt']" in p for p in paths)
    assert not any("['img']" in p for p in paths), paths
    for _ in range(cfg.warmup_steps + 1):
        updates, state = tx.update(jax.tree.map(np.ones_like, params), state, params)
    assert not np.any(updates["img"]["w"]) and np.all(updates["txt"]["w"] != 0)


def test_bad_settings_name_the_config_key(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ValueError, match="config.optim.freeze: '\\^nothing/' matches no"):
        abstract_step(lit_config(path, freeze="^nothing/"))
    config = lit_config(path)
    config.data.image_size = 32
    with pytest.raises(ValueError, match="config.data.image_size: 32.*16x16"):
        abstract_step(config)
    config = lit_config(path)
    config.model.init_towers = "img,txt"
    config.data.max_text_len = 12
    with pytest.raises(ValueError, match="config.data.max_text_len: 12.*set it to 16"):
        abstract_step(config)
    config.model.init_towers = ""
    with pytest.raises(ValueError, match="config.model.init_towers"):
        validate(config)


def test_imported_tower_is_stacked_for_a_scanned_model(checkpoint):
    """``model.scan=True``: the per-layer checkpoint is converted to the scanned layout
    (``init_from_config`` checks every shape against the scanned model)."""
    config = lit_config(checkpoint[0])
    config.model.scan = True
    vocab = get_tokenizer(config.data.tokenizer, config.data.max_text_len).vocab_size
    _, imported = pretrained.init_from_config(config, vocab)
    assert "encoderblock" in str(jax.tree_util.tree_structure(imported["img"]))
    assert equal_trees(imported["img"], scan_layers(checkpoint[1]["img"]))
    assert equal_trees(unscan_layers(imported["img"]), checkpoint[1]["img"])
