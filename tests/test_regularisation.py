"""Training-time regularisation of the towers: stochastic depth (drop-path) in the encoder
blocks and FLIP token dropping in the ViT. Off (rate 0 or ``train=False``) they leave
params and outputs unchanged; on, they draw on the "dropout" rng only."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl import config as config_lib
from multimodal_ssl.models.common import Encoder, EncoderBlock
from multimodal_ssl.models.layout import scan_layers
from multimodal_ssl.models.text import TextTransformer
from multimodal_ssl.models.vit import ViT
from tests.test_config import _recipe

SIZES = {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2}
IMAGE = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
TEXT = jnp.asarray(np.random.default_rng(1).integers(0, 40, (4, 6)), jnp.int32)
L = 16  # patch tokens of IMAGE at patch size 2


def _vit(**kw):
    return ViT(**SIZES, patch_size=2, num_classes=8, **kw)


def _text(**kw):
    return TextTransformer(**SIZES, vocab_size=40, max_len=6, num_classes=8, **kw)


def _shapes(model, x):
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _params(model, x):
    """Random N(0, 0.3^2) params of ``model`` (no init compute)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), _shapes(model, x)
    )


@pytest.mark.parametrize(
    "make, x, on",
    [
        (_vit, IMAGE, {"stochastic_depth": 0.5, "token_drop": 0.5}),
        (_text, TEXT, {"stochastic_depth": 0.5}),
    ],
    ids=["vit", "text"],
)
def test_off_is_unchanged_on_is_random_and_reproducible(make, x, on):
    assert _shapes(make(**on), x) == _shapes(make(), x)  # same tree, shapes and dtypes
    params = _params(make(), x)
    ref = make().apply({"params": params}, x)
    # Eval ignores the rates; train with rate 0 needs no "dropout" rng at all.
    np.testing.assert_array_equal(make(**on).apply({"params": params}, x), ref)
    np.testing.assert_array_equal(make().apply({"params": params}, x, train=True), ref)
    train = jax.jit(
        lambda k: make(**on).apply({"params": params}, x, train=True, rngs={"dropout": k})
    )
    a, b, c = (train(jax.random.key(seed)) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ref) and not np.allclose(a, c)


def _zero_attention(params):
    """Attention branches output 0 (out kernel and bias zeroed): only the MLP branches act."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "out" in jax.tree_util.keystr(path) else v, params
    )


def test_drop_path_is_per_example_and_unbiased():
    """One block, attention off: out - x is, per example, 0 (prob p) or the deterministic
    MLP branch / (1 - p); the mean over draws is the deterministic output."""
    p, draws = 0.4, 2000
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5, 16)), jnp.float32)
    block = EncoderBlock(mlp_dim=32, num_heads=2, stochastic_depth=p)
    params = _zero_attention(_params(block, x))
    branch = block.apply({"params": params}, x) - x  # [4, 5, 16], train=False
    outs = jax.jit(
        jax.vmap(lambda k: block.apply({"params": params}, x, train=True, rngs={"dropout": k}))
    )(jax.random.split(jax.random.key(3), draws))
    got = np.asarray(outs - x)
    kept = np.abs(got).max(axis=(2, 3)) > 0  # [draws, 4]
    want = np.where(kept[:, :, None, None], np.asarray(branch) / (1 - p), 0.0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert abs(1 - kept.mean() - p) < 0.03
    assert 0 < kept.all(axis=1).mean() < 1  # examples are dropped independently
    np.testing.assert_allclose(got.mean(axis=0), branch, atol=0.1 * np.abs(branch).max())


@pytest.mark.parametrize("scan, remat", [(False, "none"), (True, "full")])
def test_drop_path_rate_is_linear_over_depth(scan, remat):
    """Depth 2, attention off, rate 0.6: block 0 drops with 0.3, block 1 with 0.6. Each
    output is one of the 4 keep/drop outcomes, built in eval by scaling the blocks' last
    Dense by 0 (dropped) or 1 / (1 - rate) (kept)."""
    p, draws = 0.6, 1000
    x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 5, 16)), jnp.float32)
    plain = Encoder(depth=2, mlp_dim=32, num_heads=2)
    params = _zero_attention(_params(plain, x))

    rates = (p / 2, p)

    def outcome(*dropped):
        """Eval output with block i's MLP branch scaled as when it is dropped or kept."""
        scales = [0.0 if d else 1 / (1 - r) for d, r in zip(dropped, rates, strict=True)]

        def scale(path, v):
            match = re.search(r"encoderblock_(\d+).*Dense_1", jax.tree_util.keystr(path))
            return v * scales[int(match.group(1))] if match else v

        return plain.apply({"params": jax.tree_util.tree_map_with_path(scale, params)}, x)

    outcomes = np.stack([outcome(d0, d1) for d0 in (0, 1) for d1 in (0, 1)])  # [4, b, l, d]
    model = Encoder(depth=2, mlp_dim=32, num_heads=2, scan=scan, remat=remat, stochastic_depth=p)
    run_params = scan_layers(params) if scan else params
    outs = jax.jit(
        jax.vmap(lambda k: model.apply({"params": run_params}, x, train=True, rngs={"dropout": k}))
    )(jax.random.split(jax.random.key(5), draws))
    dist = np.abs(np.asarray(outs)[:, None] - outcomes[None]).max(axis=(3, 4))  # [draws, 4, b]
    assert (dist.min(axis=1) < 1e-4).all()  # every example matches an outcome
    which = dist.argmin(axis=1)  # [draws, b]: 2 * dropped0 + dropped1
    assert abs((which // 2).mean() - rates[0]) < 0.03
    assert abs((which % 2).mean() - rates[1]) < 0.03


@pytest.mark.parametrize("rate, n_keep", [(0.5, 8), (0.75, 4), (0.99, 1)])
def test_drop_tokens_keeps_a_random_subset(rate, n_keep):
    """Token t of example j is the vector j * L + t: each row keeps n_keep distinct tokens
    of its own, a different subset per example."""
    b, d = 4, 3
    x = jnp.broadcast_to(jnp.arange(b * L, dtype=jnp.float32).reshape(b, L, 1), (b, L, d))
    model = _vit(token_drop=rate)
    kept = model.apply({}, x, method=ViT._drop_tokens, rngs={"dropout": jax.random.key(6)})
    assert kept.shape == (b, n_keep, d)
    ids = np.asarray(kept[:, :, 0]).astype(int)
    for j, row in enumerate(ids):
        assert len(set(row)) == n_keep and all(j * L <= t < (j + 1) * L for t in row)
    assert len({tuple(sorted(row % L)) for row in ids}) > 1


@pytest.mark.parametrize(
    "pool, scan, remat", [("map", False, "none"), ("gap", True, "full"), ("tok", True, "dots")]
)
def test_token_drop_shortens_the_encoder_sequence(pool, scan, remat):
    """The encoder sees n_keep (+1 class token) tokens in train, all L in eval; every pool
    works, with scan and remat, and the gradients are finite."""
    model = _vit(pool=pool, scan=scan, remat=remat, token_drop=0.75, stochastic_depth=0.3)
    params = _params(model, IMAGE)
    extra = int(pool == "tok")

    def encoder_len(train):
        _, state = jax.eval_shape(
            lambda: model.apply(
                {"params": params},
                IMAGE,
                train=train,
                rngs={"dropout": jax.random.key(7)},
                capture_intermediates=lambda mdl, _: mdl.name == "Transformer",
                mutable=["intermediates"],
            )
        )
        return state["intermediates"]["Transformer"]["__call__"][0].shape[1]

    assert (encoder_len(True), encoder_len(False)) == (4 + extra, L + extra)

    def loss(p):
        out = model.apply({"params": p}, IMAGE, train=True, rngs={"dropout": jax.random.key(8)})
        return jnp.sum(out**2)

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_rates_are_checked_and_settable_from_the_config():
    with pytest.raises(ValueError, match="ViT.token_drop: must be in"):
        _vit(token_drop=1.0).init(jax.random.key(0), IMAGE)
    with pytest.raises(ValueError, match="Encoder.stochastic_depth: must be in"):
        _text(stochastic_depth=-0.1).init(jax.random.key(0), TEXT)
    config = _recipe("siglip.py", "tiny")
    config.model.image.stochastic_depth = 0.1
    config.model.image.token_drop = 0.5
    config.model.text.stochastic_depth = 0.1
    config_lib.validate(config)
