"""Device mesh from config, shardings, and host-local -> global batches.

The mesh always has the three axes ``("data", "fsdp", "model")`` (size 1 where
unused), so shardings and the ring losses are written once for every layout. The
batch is split over ``BATCH_AXES``.

Parameters (:func:`param_shardings`): each param's logical axes
(``models.layout``) are mapped to mesh axes by ``config.sharding.rules`` (default:
tensor parallel, attention ``heads`` and ``mlp`` hidden over ``model``); then FSDP
shards the largest remaining dimension divisible by ``mesh.fsdp`` over ``fsdp``, for
params of at least ``config.sharding.fsdp_min_size`` elements. A dimension not
divisible by its mesh axis stays replicated. Optimizer state follows the params
(:func:`follow_params`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from multimodal_ssl.config import MESH_AXES
from multimodal_ssl.models import layout

BATCH_AXES = ("data", "fsdp")
# Logical axes that FSDP never shards: stacked scan layers are sliced every iteration.
_NO_FSDP = ("layers",)


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Axis sizes in ``MESH_AXES`` order; one ``-1`` takes the remaining devices.

    Raises ValueError naming the config key when sizes do not multiply to
    ``num_devices``.
    """
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"config.mesh: {dict(sizes)} cannot use {num_devices} devices "
                f"({num_devices} is not divisible by {known})"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.mesh: {dict(sizes)} needs {math.prod(shape)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp", "model")`` mesh with Auto axis types over ``devices``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def batch_size_per_step(mesh: Mesh) -> int:
    """Number of shards the batch is split into (product of the batch axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ``BATCH_AXES``, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_global_batch(batch_size: int, mesh: Mesh) -> int:
    """Validates the global batch and returns this process's share of it."""
    shards = batch_size_per_step(mesh)
    if batch_size % shards:
        raise ValueError(
            f"config.batch_size: {batch_size} is not divisible by the {shards} batch shards "
            f"of mesh {dict(mesh.shape)}"
        )
    if batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size: {batch_size} is not divisible by {jax.process_count()} processes"
        )
    return batch_size // jax.process_count()


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded on the batch axes.

    Each process passes its own ``[local_batch, ...]`` rows; the result has the
    global leading dimension ``local_batch * process_count``. An entry may be a dict of
    such arrays (a NaFlex image: patches, mask, spatial_shapes); each of its arrays is
    sharded the same way.
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.tree.map(
            lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), value
        )
        for key, value in batch.items()
    }


def param_spec(
    shape: Sequence[int],
    axes: Sequence[str | None],
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]],
    fsdp_min_size: int,
) -> P:
    """PartitionSpec of one param of ``shape`` with logical ``axes`` (see module doc)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match param shape {tuple(shape)}")
    spec = list(nn.logical_to_mesh_axes(tuple(axes), tuple(map(tuple, rules))))
    for i, mesh_axis in enumerate(spec):
        if mesh_axis is not None and (
            mesh.shape[mesh_axis] == 1 or shape[i] % mesh.shape[mesh_axis]
        ):
            spec[i] = None
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and "fsdp" not in spec and math.prod(shape) >= fsdp_min_size:
        free = [
            i
            for i, n in enumerate(shape)
            if spec[i] is None and n % fsdp == 0 and axes[i] not in _NO_FSDP
        ]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return P(*spec)


def param_shardings(
    params: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, str | None]],
    fsdp_min_size: int,
) -> Any:
    """NamedSharding of every leaf of ``params`` (arrays or ShapeDtypeStructs).

    ``rules``: ``(logical axis, mesh axis or None)`` pairs, first match wins
    (``config.sharding.rules``); ``fsdp_min_size``: smallest param (in elements) FSDP
    shards. Raises ValueError naming a rule whose mesh axis is not in the mesh.
    """
    for logical, mesh_axis in rules:
        if mesh_axis is not None and mesh_axis not in mesh.shape:
            raise ValueError(
                f"config.sharding.rules: ({logical!r}, {mesh_axis!r}) names no axis of the "
                f"mesh {tuple(mesh.axis_names)}"
            )
    return jax.tree.map(
        lambda x, axes: NamedSharding(mesh, param_spec(x.shape, axes, mesh, rules, fsdp_min_size)),
        params,
        layout.logical_axes(params),
    )


def follow_params(tree: Any, params: Any, shardings: Any, default: NamedSharding) -> Any:
    """Shardings for ``tree`` (e.g. optimizer state) that follow the params.

    A leaf whose key path ends with a param's path and has that param's shape (Adam's
    ``mu``/``nu`` copies of the param tree) gets the param's sharding; every other leaf
    (step counts, factored second moments) gets ``default``.
    """
    by_path = {
        tuple(layout.path_str(p).split("/")): (x.shape, s)
        for (p, x), s in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings), strict=True
        )
    }

    def one(path, leaf):
        keys = tuple(layout.path_str(path).split("/"))
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(one, tree)
