"""Test-wide setup: 8 emulated CPU devices, so meshes of 1..8 devices can be built.

XLA_FLAGS must be set before jax is imported anywhere; single-device tests simply
use a 1-device mesh (``jax.devices()[:1]``).
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
