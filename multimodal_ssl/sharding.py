"""Device mesh from config, shardings, and host-local -> global batches.

The mesh always has the three axes ``("data", "fsdp", "model")`` (size 1 where
unused), so shardings and the ring losses are written once for every layout. The
batch is split over ``BATCH_AXES``; parameters are replicated for now (FSDP and
tensor-parallel rules map onto the same mesh).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from multimodal_ssl.config import MESH_AXES

BATCH_AXES = ("data", "fsdp")


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
    global leading dimension ``local_batch * process_count``.
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
    }


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
    """The same sharding for every leaf of ``tree``."""
    return jax.tree.map(lambda _: sharding, tree)
