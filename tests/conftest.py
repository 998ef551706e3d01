"""Test-wide setup: 8 emulated CPU devices, so meshes of 1..8 devices can be built.

XLA_FLAGS and JAX_PLATFORMS must be set before jax is imported anywhere; single-device
tests simply use a 1-device mesh (``jax.devices()[:1]``). The suite is pinned to the CPU
platform, so it runs (and compares numbers) the same on a host with a GPU or TPU; the
subprocesses the tests start inherit both variables.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402  (after XLA_FLAGS, JAX_PLATFORMS)


@pytest.fixture
def x64():
    """float64 enabled for the duration of one test (the float64 reference checks)."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
