"""Shared plumbing of the contrastive losses: input checks, batch axes, shard_map wrapping.

Every loss takes a pair of embedding matrices ``x: [B, d]`` (images) and ``y: [B, d]``
(texts), row ``i`` of ``x`` paired with row ``i`` of ``y``, plus scalars. The helpers here
validate them, pick the accumulation dtype and run a per-device body inside
``jax.shard_map`` over the mesh axes that shard the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DEFAULT_BATCH_AXES = ("data", "fsdp")
IMPLS = ("global", "all_gather", "ring")


def acc_dtype(x: jax.Array) -> jnp.dtype:
    """Accumulation dtype: at least float32 (bf16/f16 -> f32, f64 stays f64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def check_pair(x: jax.Array, y: jax.Array) -> None:
    """Raises ValueError unless ``x`` and ``y`` are floating ``[B, d]`` of equal shape."""
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ValueError(f"{name} must be [batch, dim], got shape {a.shape}")
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got dtype {a.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got x {x.shape} and y {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"x and y must have a non-empty batch, got shape {x.shape}")


def check_scalar(name: str, v: jax.Array | float) -> jax.Array:
    """Returns ``v`` as a floating 0-d array; raises ValueError naming ``name`` otherwise."""
    v = jnp.asarray(v)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.float32)
    return v


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def resolve_batch_axes(mesh: Mesh, batch_axes: Sequence[str] | str | None) -> tuple[str, ...]:
    """The mesh axes the batch is sharded over.

    ``None`` selects those of ``("data", "fsdp")`` present in the mesh. Raises ValueError
    when an axis is not in the mesh, is repeated, or none remain.
    """
    names = tuple(mesh.axis_names)
    if batch_axes is None:
        axes = tuple(a for a in DEFAULT_BATCH_AXES if a in names)
        if not axes:
            raise ValueError(
                f"batch_axes=None needs a mesh with a 'data' or 'fsdp' axis, mesh has {names}; "
                "pass batch_axes explicitly"
            )
        return axes
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    missing = [a for a in axes if a not in names]
    if missing or not axes or len(set(axes)) != len(axes):
        raise ValueError(f"batch_axes {batch_axes!r} must be distinct axes of the mesh {names}")
    return axes


def ring_size(mesh: Mesh, axes: tuple[str, ...]) -> int:
    """W: the number of batch shards (product of the sizes of ``axes``)."""
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def _place(a: jax.Array, mesh: Mesh, spec: P) -> jax.Array:
    """Puts ``a`` on ``mesh`` with ``spec`` (a transfer eagerly, a resharding under jit)."""
    return jax.device_put(a, NamedSharding(mesh, spec))


def place_batch(mesh: Mesh, axes: tuple[str, ...], *arrays: jax.Array) -> list[jax.Array]:
    """Shards each ``[B, d]`` array's rows over ``axes`` of ``mesh``.

    Raises ValueError when B is not divisible by the number of shards.
    """
    w = ring_size(mesh, axes)
    for a in arrays:
        if a.shape[0] % w:
            raise ValueError(
                f"batch {a.shape[0]} of x and y must be divisible by the {w} shards of "
                f"batch_axes {axes}"
            )
    return [_place(a, mesh, P(axes, None)) for a in arrays]


def run_sharded(
    body: Callable[..., jax.Array],
    mesh: Mesh | None,
    batch_axes: Sequence[str] | str | None,
    impl: str,
    x: jax.Array,
    y: jax.Array,
    *scalars: jax.Array,
) -> jax.Array:
    """Runs ``body(x_local, y_local, *scalars) -> scalar`` inside ``jax.shard_map``.

    ``x``, ``y``: ``[B, d]``, rows sharded over the batch axes (resharded if needed);
    ``scalars`` replicated. ``body`` must return a value invariant over the batch axes
    (e.g. a ``psum``); it is traced with ``axes`` (tuple of batch axis names) and ``W`` as
    keyword arguments. Raises ValueError for a missing mesh or a batch not divisible by W.
    """
    if mesh is None:
        raise ValueError(f"impl={impl!r} runs inside jax.shard_map and needs mesh=, got None")
    axes = resolve_batch_axes(mesh, batch_axes)
    w = ring_size(mesh, axes)
    x, y = place_batch(mesh, axes, x, y)
    scalars = [_place(s, mesh, P()) for s in scalars]
    spec = P(axes, None)
    fn = jax.shard_map(
        lambda xl, yl, *sc: body(xl, yl, *sc, axes=axes, W=w),
        mesh=mesh,
        in_specs=(spec, spec, *([P()] * len(scalars))),
        out_specs=P(),
    )
    return fn(x, y, *scalars)


def replicate_rows(a: jax.Array) -> jax.Array:
    """``a`` with Explicit-sharded rows gathered (replicated); otherwise ``a`` unchanged.

    Dense losses that contract several batch-sharded operands (Symile, GRAM) keep the
    first one's row sharding and replicate the others: a product sharded on the same mesh
    axes in two dimensions is not a legal type.
    """
    sharding = jax.typeof(a).sharding
    if isinstance(sharding, NamedSharding) and any(sharding.spec):
        return jax.sharding.reshard(a, sharding.update(spec=P()))
    return a


def prepare_pair(x, y, impl, mesh, chunk_size, batch_axes) -> tuple[jax.Array, jax.Array]:
    """The checks every pairwise loss starts with (shapes, ``impl``, ``chunk_size``); for
    ``impl="global"`` on a mesh, ``x, y`` placed with their rows on the batch axes."""
    check_pair(x, y)
    check_impl(impl)
    check_chunk_size(chunk_size)
    if impl == "global" and mesh is not None:
        x, y = place_batch(mesh, resolve_batch_axes(mesh, batch_axes), x, y)
    return x, y
