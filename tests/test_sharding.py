"""Mesh construction from config sizes and host->global batches."""

import jax
import numpy as np
import pytest

from multimodal_ssl.sharding import (
    batch_sharding,
    check_global_batch,
    make_mesh,
    resolve_mesh_shape,
    to_global,
)


@pytest.mark.parametrize(
    "sizes, n, expected",
    [
        ({"data": -1, "fsdp": 1, "model": 1}, 8, (8, 1, 1)),
        ({"data": 2, "fsdp": -1, "model": 2}, 8, (2, 2, 2)),
        ({"data": -1}, 1, (1, 1, 1)),
        ({"data": 4, "fsdp": 1, "model": 2}, 8, (4, 1, 2)),
    ],
)
def test_resolve_mesh_shape(sizes, n, expected):
    assert resolve_mesh_shape(sizes, n) == expected


@pytest.mark.parametrize(
    "sizes, n, message",
    [
        ({"data": 3, "fsdp": 1, "model": 1}, 8, "needs 3 devices, but 8 are available"),
        ({"data": -1, "fsdp": 3, "model": 1}, 8, "not divisible by 3"),
    ],
)
def test_resolve_mesh_shape_errors(sizes, n, message):
    with pytest.raises(ValueError, match=message):
        resolve_mesh_shape(sizes, n)


def test_batch_is_split_over_data_and_fsdp():
    mesh = make_mesh({"data": 2, "fsdp": 2, "model": 2}, jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
    batch = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    out = to_global(batch, mesh)["x"]
    assert out.sharding == batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(out), batch["x"])
    shard_rows = {s.data.shape[0] for s in out.addressable_shards}
    assert shard_rows == {4}  # 16 rows over 4 batch shards, replicated over model


def test_global_batch_must_divide_over_batch_shards():
    mesh = make_mesh({"data": 4, "fsdp": 1, "model": 2}, jax.devices()[:8])
    assert check_global_batch(8, mesh) == 8
    with pytest.raises(ValueError, match="config.batch_size: 6 is not divisible by the 4"):
        check_global_batch(6, mesh)
