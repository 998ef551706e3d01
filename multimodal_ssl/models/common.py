"""Building blocks shared by the towers: dtypes, the pre-LN transformer encoder, the MLP,
multi-head attention pooling (MAP) and sin-cos position embeddings (size variants:
:mod:`multimodal_ssl.models.variants`).

Parameter names mirror big_vision (``Transformer/encoderblock_{i}/{LayerNorm_0,
MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}``, ``encoder_norm``,
``MAPHead_0/{probe, ...}``), so big_vision checkpoints map onto our trees one to one.
Attention is built in one place (:func:`attention`), so a fused kernel can be swapped in
without touching the towers.

Precision: parameters are always float32; ``dtype`` is the compute dtype of matmuls and
activations. LayerNorm statistics and attention softmax are computed in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from multimodal_ssl.models.activation_sharding import constrain_batch
from multimodal_ssl.models.norm import LN_EPS, LayerNorm

COMPUTE_DTYPES = ("float32", "bfloat16")
# Encoder.remat: what each block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no remat: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block inputs
    "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def compute_dtype(dtype: Any) -> jnp.dtype:
    """``"float32"``/``"bfloat16"`` (or the jnp dtype) -> jnp dtype; else ValueError."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {list(COMPUTE_DTYPES)}")
    return resolved


def posemb_sincos2d(
    h: int, w: int, width: int, temperature: float = 10_000.0, dtype: Any = jnp.float32
) -> jnp.ndarray:
    """Fixed 2-D sin-cos position embedding (MoCo v3 / big_vision): ``[1, h*w, width]``.

    Row-major over the (h, w) grid; features are ``[sin(x·ω), cos(x·ω), sin(y·ω),
    cos(y·ω)]`` with ``ω_k = temperature^(-k/(width/4-1))``, x the column, y the row.
    """
    if width % 4 or width < 8:
        raise ValueError(f"posemb: sincos2d needs width divisible by 4 and >= 8, got {width}")
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return jnp.asarray(pe[None], dtype)


def layer_norm(dtype: Any, name: str) -> LayerNorm:
    """LayerNorm with eps 1e-6, f32 statistics (two-pass variance, as in PyTorch); flax's
    params and values, with a backward pass that is faster on CPU (models/norm.py)."""
    return LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def _flat_xavier(num_in_dims: int) -> nn.initializers.Initializer:
    """Xavier-uniform over the kernel flattened to ``[prod(in dims), prod(out dims)]``,
    as flax's ``DenseGeneral`` initialises its kernels."""

    def init(rng: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        flat = (int(np.prod(shape[:num_in_dims])), int(np.prod(shape[num_in_dims:])))
        return jnp.reshape(nn.initializers.xavier_uniform()(rng, flat, dtype), shape)

    return init


class _ProjectionParams(nn.Module):
    """Declares one projection's ``kernel`` and zero ``bias`` (float32) and returns them;
    names, shapes and init rngs are those of a flax ``DenseGeneral`` of the same name."""

    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    num_in_dims: int = 1

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", _flat_xavier(self.num_in_dims), self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros_init(), self.bias_shape)
        return kernel, bias


class MultiHeadAttention(nn.Module):
    """The one multi-head dot-product attention used everywhere (blocks and MAP head).

    Params are exactly those of flax's ``MultiHeadDotProductAttention`` (same names,
    shapes and initial values, so big_vision/HF checkpoints load unchanged):
    ``{query,key,value}/kernel [d, heads, d/heads]``, ``bias [heads, d/heads]``,
    ``out/kernel [heads, d/heads, d]``, ``out/bias [d]``. The projections are fused at
    run time: self-attention does one ``[d, 3, heads, d/heads]`` matmul, cross-attention
    one for the query and one ``[d, 2, heads, d/heads]`` for key and value, which is
    faster on CPU than three thin ones (experiments/throughput.md). Softmax in float32.

    inputs_q: [b, q, d]; inputs_kv: [b, k, d] (pass the same array for self-attention)
    -> [b, q, d] in ``dtype``. ``mask``: optional bool [b, k], False for keys to ignore
    (padded NaFlex patches); None attends to every key. Tensor parallel: the ``heads``
    axis may be sharded.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray, mask: jnp.ndarray | None = None
    ) -> jnp.ndarray:
        d = inputs_q.shape[-1]
        heads, head_dim = self.num_heads, d // self.num_heads
        qkv = [
            _ProjectionParams((d, heads, head_dim), (heads, head_dim), name=name)()
            for name in ("query", "key", "value")
        ]
        out_kernel, out_bias = _ProjectionParams((heads, head_dim, d), (d,), 2, name="out")()
        dt = self.dtype
        if inputs_q is inputs_kv:
            q, k, v = _project(inputs_q.astype(dt), qkv, dt)
        else:
            (q,) = _project(inputs_q.astype(dt), qkv[:1], dt)
            k, v = _project(inputs_kv.astype(dt), qkv[1:], dt)
        q = q / jnp.sqrt(head_dim).astype(dt)
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k)
        logits = logits.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(dt)
        y = constrain_batch(jnp.einsum("bhqk,bkhc->bqhc", weights, v))
        return jnp.einsum("bqhc,hcd->bqd", y, out_kernel.astype(dt)) + out_bias.astype(dt)


def _project(
    x: jnp.ndarray, params: list[tuple[jax.Array, jax.Array]], dtype: Any
) -> list[jnp.ndarray]:
    """x [b, l, d] through n stacked projections in one matmul -> n arrays [b, l, h, c]."""
    kernel = jnp.stack([k for k, _ in params], axis=1).astype(dtype)  # [d, n, h, c]
    bias = jnp.stack([b for _, b in params]).astype(dtype)  # [n, h, c]
    y = jnp.einsum("bld,dnhc->blnhc", x, kernel) + bias
    return [y[:, :, i] for i in range(len(params))]


def attention(num_heads: int, dtype: Any, name: str) -> MultiHeadAttention:
    """The attention module of the blocks and the MAP head (one place to swap kernels)."""
    return MultiHeadAttention(num_heads=num_heads, dtype=dtype, name=name)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dense(d). x: [..., d] -> [..., d] in ``dtype``.

    ``gelu_approximate=True`` is the tanh GELU of SigLIP / big_vision.
    """

    mlp_dim: int
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        inits = {
            "kernel_init": nn.initializers.xavier_uniform(),
            "bias_init": nn.initializers.normal(stddev=1e-6),
        }
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", **inits)(x)
        x = nn.gelu(constrain_batch(x), approximate=self.gelu_approximate)
        x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
        return nn.Dense(d, dtype=self.dtype, name="Dense_1", **inits)(x)


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``. x: [b, l, d] -> same.

    Bidirectional, as in SigLIP's towers; ``mask`` (bool [b, l], optional) hides padded
    tokens from the attention (NaFlex). ``stochastic_depth`` p > 0 with
    ``train=True`` (drop-path, Huang et al. 2016): each residual branch is zeroed per
    example with probability ``rate = p * depth_scale``, else scaled by ``1 / (1 - rate)``,
    drawing on the "dropout" rng. ``depth_scale`` may be traced (one value per layer
    under ``nn.scan``); p = 0 or ``train=False`` leaves the block as without it.
    """

    mlp_dim: int
    num_heads: int
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32
    stochastic_depth: float = 0.0

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        *,
        train: bool = False,
        depth_scale: float | jax.Array = 1.0,
        mask: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        x = constrain_batch(x)
        y = layer_norm(self.dtype, "LayerNorm_0")(x)
        y = attention(self.num_heads, self.dtype, "MultiHeadDotProductAttention_0")(y, y, mask)
        y = nn.Dropout(rate=self.dropout)(y, deterministic=not train)
        x = constrain_batch(x + self._drop_path(y, depth_scale, train))
        y = layer_norm(self.dtype, "LayerNorm_1")(x)
        y = MlpBlock(
            self.mlp_dim, self.gelu_approximate, self.dropout, self.dtype, name="MlpBlock_0"
        )(y, train=train)
        y = nn.Dropout(rate=self.dropout)(y, deterministic=not train)
        return x + self._drop_path(y, depth_scale, train)

    def _drop_path(
        self, y: jnp.ndarray, depth_scale: float | jax.Array, train: bool
    ) -> jnp.ndarray:
        """y [b, ...] -> same: per example 0 with probability ``rate``, else y / (1 - rate)."""
        if not train or self.stochastic_depth == 0:
            return y
        keep = 1.0 - self.stochastic_depth * depth_scale
        shape = (y.shape[0],) + (1,) * (y.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return y * (mask / keep).astype(y.dtype)


class _CarryBlock(EncoderBlock):
    """EncoderBlock with positional ``depth_scale``, ``train`` (static under remat) and
    ``mask``, returning the ``(carry, output)`` pair that ``nn.scan`` needs."""

    def __call__(
        self,
        x: jnp.ndarray,
        depth_scale: float | jax.Array,
        train: bool = False,
        mask: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, None]:
        return super().__call__(x, train=train, depth_scale=depth_scale, mask=mask), None


def _block_class(remat: str, scan: bool) -> type[nn.Module]:
    """The block class, wrapped in ``nn.remat`` with the named policy unless "none"."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"Encoder.remat: {remat!r} is not one of {list(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[remat]
    if policy is None:
        return _CarryBlock
    # prevent_cse is only needed outside scan (jax.checkpoint docs).
    return nn.remat(_CarryBlock, policy=policy, static_argnums=(3,), prevent_cse=not scan)


class Encoder(nn.Module):
    """``depth`` blocks ``encoderblock_{i}`` then LayerNorm ``encoder_norm``.

    x: [b, l, d] -> [b, l, d] in ``dtype``. ``scan=True``: one ``nn.scan`` over the
    blocks, params stacked ``[depth, ...]`` under ``encoderblock`` (convert with
    ``models.layout.scan_layers``/``unscan_layers``); compiles once per block instead
    of ``depth`` times. ``remat``: recompute each block's activations in the backward
    pass, saving only what the policy names (:data:`REMAT_POLICIES`).
    ``stochastic_depth``: drop-path rate of the last block in [0, 1); block i (from 0)
    uses ``stochastic_depth * (i + 1) / depth`` (Huang et al.'s linear decay), only with
    ``train=True``; see :class:`EncoderBlock`. ``mask``: bool [b, l] of the tokens to
    attend to (None: all).
    """

    depth: int
    mlp_dim: int
    num_heads: int
    gelu_approximate: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32
    scan: bool = False
    remat: str = "none"
    stochastic_depth: float = 0.0

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool = False, mask: jnp.ndarray | None = None
    ) -> jnp.ndarray:
        if not 0 <= self.stochastic_depth < 1:
            raise ValueError(
                f"Encoder.stochastic_depth: must be in [0, 1), got {self.stochastic_depth!r}"
            )
        block = _block_class(self.remat, self.scan)
        args = (
            self.mlp_dim,
            self.num_heads,
            self.gelu_approximate,
            self.dropout,
            self.dtype,
            self.stochastic_depth,
        )
        scales = np.arange(1, self.depth + 1, dtype=np.float32) / self.depth
        if self.scan:
            x, _ = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast),
                length=self.depth,
            )(*args, name="encoderblock")(x, jnp.asarray(scales), train, mask)
        else:
            for i in range(self.depth):
                x, _ = block(*args, name=f"encoderblock_{i}")(x, float(scales[i]), train, mask)
        return layer_norm(self.dtype, "encoder_norm")(constrain_batch(x))


class MAPHead(nn.Module):
    """Multi-head attention pooling (big_vision / SigLIP): a learned ``probe`` [1, 1, d]
    attends over the tokens, then ``x + MLP(LN(x))``. x: [b, l, d] -> [b, d];
    ``mask`` (bool [b, l], optional): only the True tokens are pooled.

    Permutation-invariant in the tokens: there is no position information in the head.
    """

    mlp_dim: int
    num_heads: int
    gelu_approximate: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d))
        x = attention(self.num_heads, self.dtype, "MultiHeadDotProductAttention_0")(probe, x, mask)
        y = layer_norm(self.dtype, "LayerNorm_0")(x)
        x = x + MlpBlock(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, name="MlpBlock_0")(
            y
        )
        return x[:, 0]


def add_learned_positions(
    tower: nn.Module, x: jnp.ndarray, max_len: int, dtype: Any, *, train: bool
) -> jnp.ndarray:
    """``x`` [b, l, d] (l <= max_len) plus the first l rows of the tower's learned
    ``pos_embedding`` [1, max_len, d] (normal, std 1/sqrt(d)), then the tower's dropout;
    called inside the tower's compact ``__call__`` (text and sequence towers)."""
    width = x.shape[-1]
    pos = tower.param(
        "pos_embedding",
        nn.initializers.normal(stddev=1 / np.sqrt(width)),
        (1, max_len, width),
        jnp.float32,
    )
    x = x + pos[:, : x.shape[1]].astype(dtype)
    return nn.Dropout(rate=tower.dropout)(x, deterministic=not train)


def encode_and_pool(
    tower: nn.Module,
    x: jnp.ndarray,
    sizes: Mapping[str, Any],
    dtype: Any,
    *,
    train: bool,
    name: str,
    mask: jnp.ndarray | None = None,
    return_tokens: bool = False,
) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
    """The shared body of the transformer towers (ViT, text, sequence), called inside
    their compact ``__call__``: the pre-LN :class:`Encoder` named ``name`` over the tokens
    ``x`` [b, l, d], then :func:`pool_and_project`. Reads the tower's ``dropout``,
    ``stochastic_depth``, ``gelu_approximate``, ``scan``, ``remat``, ``pool`` and
    ``num_classes``; ``sizes``: its resolved ``depth``, ``mlp_dim``, ``num_heads``.
    ``mask``: bool [b, l] of the real tokens (None: all), for attention and pooling.
    ``return_tokens``: also return the encoder's output tokens [b, l, d] (after
    ``encoder_norm``, before pooling)."""
    x = Encoder(
        sizes["depth"],
        sizes["mlp_dim"],
        sizes["num_heads"],
        tower.gelu_approximate,
        tower.dropout,
        dtype,
        scan=tower.scan,
        remat=tower.remat,
        stochastic_depth=tower.stochastic_depth,
        name=name,
    )(x, train=train, mask=mask)
    pooled = pool_and_project(
        x,
        tower.pool,
        mlp_dim=sizes["mlp_dim"],
        num_heads=sizes["num_heads"],
        gelu_approximate=tower.gelu_approximate,
        num_classes=tower.num_classes,
        dtype=dtype,
        mask=mask,
    )
    return (pooled, x) if return_tokens else pooled


def pool_and_project(
    x: jnp.ndarray,
    pool: str,
    *,
    mlp_dim: int,
    num_heads: int,
    gelu_approximate: bool,
    num_classes: int | None,
    dtype: Any,
    mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """The shared tail of both towers, called inside their compact ``__call__`` (so the
    submodules are named ``MAPHead_0`` and ``head`` in the tower's scope).

    x: [b, l, d] encoder output -> f32 [b, num_classes or d]. ``pool``: ``"map"``
    (attention pooling), ``"gap"``/``"mean"`` (token mean), ``"tok"``/``"first"``
    (token 0), ``"last"`` (token -1). ``mask`` (bool [b, l], optional): "map" and
    "gap" pool only the True tokens.
    """
    if pool == "map":
        x = MAPHead(mlp_dim, num_heads, gelu_approximate, dtype, name="MAPHead_0")(x, mask)
    elif pool in ("gap", "mean") and mask is not None:
        weights = (mask / jnp.sum(mask, axis=1, keepdims=True)).astype(x.dtype)
        x = jnp.einsum("bld,bl->bd", x, weights)
    elif pool in ("gap", "mean"):
        x = jnp.mean(x, axis=1)
    elif pool in ("tok", "first"):
        x = x[:, 0]
    elif pool == "last":
        x = x[:, -1]
    else:
        raise ValueError(f"pool: {pool!r} is not a known pooling")
    if num_classes:
        x = nn.Dense(num_classes, dtype=dtype, name="head")(x)
    return x.astype(jnp.float32)
