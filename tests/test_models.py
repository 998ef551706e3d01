"""Models: shapes per pooling, variant parsing, param layout, dtypes, and the forward
pass against an independent numpy implementation of the big_vision architecture."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl.models import (
    MultiTower,
    TextTransformer,
    ViT,
    parse_variant,
    posemb_sincos2d,
)
from multimodal_ssl.models.common import Encoder, MAPHead, attention, layer_norm

TINY = {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2}
KEY = jax.random.key(0)


def _shapes(model, *inputs, **kw):
    """Param shapes and output shapes by abstract evaluation (no compilation)."""
    params = jax.eval_shape(model.init, KEY, *inputs, **kw)["params"]
    return params, jax.eval_shape(model.apply, {"params": params}, *inputs, **kw)


def _random_params(model, *inputs, seed=0, **kw):
    """Random N(0, 0.5^2) values for every param (LayerNorm scales too, so the reference
    tests see non-trivial scales). Cheaper than ``init``, whose compilation of the
    initialisers dominates these tiny tests."""
    rng = np.random.default_rng(seed)
    shapes, _ = _shapes(model, *inputs, **kw)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def _params_apply(model, *inputs):
    params = _random_params(model, *inputs)
    return params, jax.jit(model.apply)({"params": params}, *inputs)


def _images(b=2, size=8, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 3)), jnp.float32)


def _tokens(b=2, length=6, vocab=50, seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, length)), jnp.int32)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- numpy reference


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _mha(xq, xkv, p):
    q, k, v = (
        np.einsum("bld,dhk->blhk", x, p[n]["kernel"]) + p[n]["bias"]
        for x, n in ((xq, "query"), (xkv, "key"), (xkv, "value"))
    )
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", w, v)
    return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _mlp(x, p, approximate):
    h = _gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], approximate)
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _encoder(x, p, depth, approximate):
    for i in range(depth):
        blk = p[f"encoderblock_{i}"]
        y = _ln(x, blk["LayerNorm_0"])
        x = x + _mha(y, y, blk["MultiHeadDotProductAttention_0"])
        x = x + _mlp(_ln(x, blk["LayerNorm_1"]), blk["MlpBlock_0"], approximate)
    return _ln(x, p["encoder_norm"])


def _map_head(x, p, approximate):
    probe = np.broadcast_to(p["probe"], (x.shape[0], 1, x.shape[-1]))
    x = _mha(probe, x, p["MultiHeadDotProductAttention_0"])
    return (x + _mlp(_ln(x, p["LayerNorm_0"]), p["MlpBlock_0"], approximate))[:, 0]


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------- forward vs reference


@pytest.mark.parametrize("approximate", [True, False])
def test_vit_matches_numpy_reference(approximate):
    model = ViT(
        **{**TINY, "depth": 2},
        patch_size=4,
        pool="map",
        num_classes=5,
        gelu_approximate=approximate,
    )
    images = _images(size=8)
    params, out = _params_apply(model, images)
    p = _np(params)
    x = np.asarray(images, np.float64)
    b, s, c = x.shape[0], 4, 3
    # Conv with kernel = stride = patch is a matmul on flattened (row, col, channel) patches.
    patches = x.reshape(b, 2, s, 2, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, s * s * c)
    h = patches @ p["embedding"]["kernel"].reshape(s * s * c, -1) + p["embedding"]["bias"]
    h = _encoder(h + p["pos_embedding"], p["Transformer"], 2, approximate)
    ref = _map_head(h, p["MAPHead_0"], approximate) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_text_matches_numpy_reference():
    model = TextTransformer(**TINY, vocab_size=50, max_len=8, pool="last", num_classes=3)
    tokens = _tokens(length=6)
    params, out = _params_apply(model, tokens)
    p = _np(params)
    h = p["Embed_0"]["embedding"][np.asarray(tokens)] + p["pos_embedding"][:, :6]
    h = _encoder(h, p["Encoder_0"], 1, approximate=True)
    ref = h[:, -1] @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
def test_fused_attention_equals_flax_attention(cross):
    """Same param tree and initial values as flax's MultiHeadDotProductAttention (so
    checkpoints and converters are unaffected) and the same outputs, for self-attention
    (fused QKV) and cross-attention (fused KV, as in the MAP head)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(1), (2, 7, 24))
    q = jax.random.normal(jax.random.key(2), (2, 3, 24)) if cross else x
    ref = nn.MultiHeadDotProductAttention(
        num_heads=4,
        kernel_init=nn.initializers.xavier_uniform(),
        force_fp32_for_softmax=True,
        deterministic=True,
    )
    ours = attention(4, jnp.float32, "attn")
    params = ref.init(jax.random.key(0), q, x)
    ours_params = ours.init(jax.random.key(0), q, x)
    assert jax.tree.structure(ours_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # Random biases too, so that the bias stacking is checked.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape), params)
    np.testing.assert_allclose(
        ours.apply(params, q, x), ref.apply(params, q, x), rtol=1e-5, atol=1e-6
    )


def test_layer_norm_eps_and_two_pass_f32_statistics():
    """eps 1e-6 matters at variance ~1e-6; a large mean breaks E[x^2] - E[x]^2 in f32."""
    x = 100.0 + 1e-3 * np.random.default_rng(7).normal(size=(4, 32))
    ln = layer_norm(jnp.bfloat16, "LayerNorm_0")
    params = {"scale": np.ones(32), "bias": np.zeros(32)}
    out = ln.apply({"params": params}, jnp.asarray(x, jnp.float32))
    assert out.dtype == jnp.bfloat16  # output in the compute dtype, statistics in f32
    ref = _ln(np.asarray(jnp.asarray(x, jnp.float32), np.float64), params)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.02)


# ---------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize(
    "pool,posemb,num_classes",
    [
        ("map", "learn", None),
        ("gap", "sincos2d", 7),
        ("tok", "learn", 7),
        ("tok", "sincos2d", None),
    ],
)
def test_vit_pooling_shapes_and_params(pool, posemb, num_classes):
    model = ViT(**TINY, patch_size=4, pool=pool, posemb=posemb, num_classes=num_classes)
    params, out = _shapes(model, _images(b=3, size=8))
    assert out.shape == (3, num_classes or 16) and out.dtype == jnp.float32
    assert ("MAPHead_0" in params) == (pool == "map")
    assert ("cls" in params) == (pool == "tok")
    assert ("pos_embedding" in params) == (posemb == "learn")
    assert ("head" in params) == (num_classes is not None)
    block = params["Transformer"]["encoderblock_0"]
    assert set(block) == {
        "LayerNorm_0",
        "MultiHeadDotProductAttention_0",
        "LayerNorm_1",
        "MlpBlock_0",
    }
    assert params["embedding"]["kernel"].shape == (4, 4, 3, 16)
    assert "encoder_norm" in params["Transformer"]


@pytest.mark.parametrize("pool", ["last", "first", "mean", "map"])
def test_text_pooling_shapes(pool):
    model = TextTransformer(**TINY, vocab_size=50, max_len=8, pool=pool)
    params, out = _shapes(model, _tokens(b=3, length=5))
    assert out.shape == (3, 16) and out.dtype == jnp.float32
    assert params["pos_embedding"].shape == (1, 8, 16)
    assert set(params) == {"Embed_0", "pos_embedding", "Encoder_0"} | (
        {"MAPHead_0"} if pool == "map" else set()
    )


def test_map_head_shape_and_token_permutation_invariance():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 7, 16)), jnp.float32)
    head = MAPHead(mlp_dim=32, num_heads=4)
    params, out = _params_apply(head, x)
    assert out.shape == (3, 16)
    assert set(params) == {"probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"}
    perm = np.random.default_rng(4).permutation(7)
    np.testing.assert_allclose(jax.jit(head.apply)({"params": params}, x[:, perm]), out, atol=1e-5)


def test_encoder_is_bidirectional_and_permutation_equivariant():
    """No mask: permuting tokens permutes the output; the first position sees the last."""
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 16)), jnp.float32)
    enc = Encoder(depth=2, mlp_dim=32, num_heads=2)
    params, out = _params_apply(enc, x)
    perm = np.random.default_rng(6).permutation(6)
    apply = jax.jit(enc.apply)
    np.testing.assert_allclose(apply({"params": params}, x[:, perm]), out[:, perm], atol=1e-5)
    changed = apply({"params": params}, x.at[:, -1].set(x[:, 0]))
    assert np.abs(changed[:, 0] - out[:, 0]).max() > 1e-3


def test_examples_do_not_interact():
    model = TextTransformer(**TINY, vocab_size=50, max_len=8, pool="map")
    tokens = _tokens(b=3, length=8)
    params, out = _params_apply(model, tokens)
    out2 = jax.jit(model.apply)({"params": params}, tokens.at[1:].set(7))
    np.testing.assert_allclose(out2[0], out[0], atol=1e-6)


def test_dropout_only_in_training():
    model = TextTransformer(**TINY, vocab_size=50, max_len=8, dropout=0.5)
    tokens = _tokens()
    params, out = _params_apply(model, tokens)
    apply = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(apply({"params": params}, tokens, train=False), out, atol=1e-6)
    rngs = [{"dropout": jax.random.key(i)} for i in (1, 2)]
    a, b = (apply({"params": params}, tokens, train=True, rngs=r) for r in rngs)
    assert np.abs(a - out).max() > 1e-3 and np.abs(a - b).max() > 1e-3


# ---------------------------------------------------------------- variants


def test_variant_parsing_and_overrides():
    assert parse_variant("B/16", with_patch=True) == {
        "width": 768,
        "depth": 12,
        "mlp_dim": 3072,
        "num_heads": 12,
        "patch_size": (16, 16),
    }
    assert parse_variant("so400m/14", with_patch=True)["width"] == 1152
    assert parse_variant("ti", with_patch=False)["num_heads"] == 3
    assert parse_variant("g", with_patch=False)["width"] == 1408  # giant
    assert parse_variant("G", with_patch=False)["width"] == 1664  # gigantic
    sizes = ViT(variant="mu/4", depth=4, patch_size=8).sizes()
    assert sizes == {"width": 32, "depth": 4, "mlp_dim": 128, "num_heads": 2, "patch_size": (8, 8)}
    assert TextTransformer(variant="S", width=64, num_heads=4).sizes() == {
        "width": 64,
        "depth": 12,
        "mlp_dim": 1536,
        "num_heads": 4,
    }


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ViT(variant="huge/16").sizes(), r"unknown size 'huge'.*'So400m'"),
        (lambda: ViT(variant="B/x").sizes(), "cannot parse"),
        (lambda: TextTransformer(variant="B/16").sizes(), "has a patch size"),
        (lambda: ViT(variant="B").sizes(), r"no value for \['patch_size'\]"),
        (lambda: TextTransformer(width=8).sizes(), "no value for"),
        (lambda: ViT(variant="mu/4", num_heads=3).sizes(), "not divisible by num_heads 3"),
    ],
)
def test_bad_variants_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "model,x,match",
    [
        (ViT(**TINY, patch_size=3), _images(size=8), "divisible by patch"),
        (ViT(**TINY, patch_size=4, pool="cls"), _images(size=8), "ViT.pool"),
        (ViT(**TINY, patch_size=4, posemb="sin"), _images(size=8), "ViT.posemb"),
        (ViT(**TINY, patch_size=4, dtype="int8"), _images(size=8), "dtype"),
        (TextTransformer(**TINY, max_len=4), _tokens(length=6), "exceeds max_len 4"),
        (TextTransformer(**TINY, pool="max"), _tokens(), "TextTransformer.pool"),
    ],
)
def test_bad_inputs_raise(model, x, match):
    with pytest.raises(ValueError, match=match):
        _shapes(model, x)


def test_param_counts_of_siglip_base():
    """SigLIP B/16 @224: ViT with MAP head and no head 92,884,224 params (embedding
    590,592 + posemb 150,528 + 12 blocks x 7,087,872 + norm 1,536 + MAP head 7,087,104);
    text tower (vocab 32k, 64 positions, head 768) 110,271,744; t and b belong to the
    objective, not the model."""
    model = MultiTower(
        towers={
            "image": {"type": "vit", "variant": "B/16", "pool": "map", "num_classes": None},
            "text": {"type": "text", "variant": "B", "vocab_size": 32_000, "max_len": 64},
        },
        embed_dim=768,
    )
    inputs = {"image": jnp.zeros((1, 224, 224, 3)), "text": jnp.zeros((1, 64), jnp.int32)}
    shapes = jax.eval_shape(model.init, KEY, inputs)["params"]
    assert set(shapes) == {"img", "txt"}
    assert _count(shapes["img"]) == 92_884_224
    assert _count(shapes["txt"]) == 110_271_744
    assert _count(shapes) == 92_884_224 + 110_271_744


# ---------------------------------------------------------------- sincos2d


def test_posemb_sincos2d_known_values():
    h, w, width, temp = 3, 4, 16, 10_000.0
    quarter = width // 4
    ref = np.zeros((h * w, width))
    for row in range(h):
        for col in range(w):
            for k in range(quarter):
                omega = temp ** (-k / (quarter - 1))
                i = row * w + col
                ref[i, k] = math.sin(col * omega)
                ref[i, quarter + k] = math.cos(col * omega)
                ref[i, 2 * quarter + k] = math.sin(row * omega)
                ref[i, 3 * quarter + k] = math.cos(row * omega)
    pe = posemb_sincos2d(h, w, width)
    assert pe.shape == (1, 12, 16) and pe.dtype == jnp.float32
    np.testing.assert_allclose(pe[0], ref, atol=1e-6)
    np.testing.assert_allclose(pe[0, 0], [0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        posemb_sincos2d(2, 2, 18)
