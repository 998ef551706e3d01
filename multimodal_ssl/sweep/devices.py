"""Splitting this machine's devices between ``--parallel=N`` concurrent runs.

Each of the N slots gets an environment (and on CPU a set of cores) that its runs start
with; runs never share a device:

- GPUs (``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``; skipped when
  ``JAX_PLATFORMS`` starts with ``cpu``): slot i gets ``CUDA_VISIBLE_DEVICES`` set to the
  i-th contiguous group of ``G // N`` GPUs (the remainder idles); N > G is an error.
- CPU: the host's cores (this process's affinity) are split into N contiguous groups and
  each run is pinned to its group (``sched_setaffinity``; XLA sizes its thread pools
  from it); N > cores shares all cores. Emulated devices
  (``--xla_force_host_platform_device_count=K`` in ``XLA_FLAGS``) are split too: K // N
  per slot (at least 1).
- TPU hosts (``/dev/accel0``, ...; hosts exposing TPUs through VFIO only are not
  detected): one process owns every chip, so N > 1 is an error; run the ``--dry_run``
  commands through a scheduler instead.

``--parallel=1`` leaves the environment as it is.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping

DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one run of a parallel sweep executes: its full environment and, on CPU,
    the cores it is pinned to (None: not pinned)."""

    env: dict[str, str]
    cores: tuple[int, ...] | None = None

    def describe(self) -> str:
        """The settings this slot changes, e.g. ``CUDA_VISIBLE_DEVICES=0,1``."""
        parts = [f"{k}={self.env[k]}" for k in ("CUDA_VISIBLE_DEVICES",) if k in self.env]
        match = DEVICE_COUNT.search(self.env.get("XLA_FLAGS", ""))
        if match:
            parts.append(f"cpu devices={match.group(1)}")
        if self.cores is not None:
            parts.append(f"cores={','.join(map(str, self.cores))}")
        return " ".join(parts)


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPU ids a run could use: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``'s list;
    none when ``JAX_PLATFORMS`` asks for CPU."""
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
        return []
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _split(items: list, n: int) -> list[list]:
    """``n`` contiguous groups of ``len(items) // n`` items (the remainder is left out)."""
    size = len(items) // n
    return [items[i * size : (i + 1) * size] for i in range(n)]


def slots(
    parallel: int,
    env: Mapping[str, str] | None = None,
    cores: list[int] | None = None,
    gpus: list[str] | None = None,
    tpu: bool | None = None,
) -> list[Slot]:
    """``parallel`` slots splitting the devices (module docstring). ``env``, ``cores``,
    ``gpus``, ``tpu``: this machine's (read when None)."""
    env = dict(os.environ if env is None else env)
    if parallel < 1:
        raise ValueError(f"--parallel={parallel}: must be >= 1")
    if parallel == 1:
        return [Slot(env)]
    tpu = bool(glob.glob("/dev/accel[0-9]*")) if tpu is None else tpu
    if tpu and not env.get("JAX_PLATFORMS", "").startswith("cpu"):
        raise ValueError(
            f"--parallel={parallel}: on a TPU host one process owns every chip; use "
            f"--parallel=1, or submit the --dry_run commands to a scheduler"
        )
    gpus = visible_gpus(env) if gpus is None else gpus
    if gpus:
        if parallel > len(gpus):
            raise ValueError(
                f"--parallel={parallel}: only {len(gpus)} GPUs are visible ({','.join(gpus)}); "
                f"use --parallel<={len(gpus)}"
            )
        return [Slot({**env, "CUDA_VISIBLE_DEVICES": ",".join(g)}) for g in _split(gpus, parallel)]
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    groups = _split(cores, parallel) if len(cores) >= parallel else [None] * parallel
    flags = env.get("XLA_FLAGS", "")
    match = DEVICE_COUNT.search(flags)
    if match:
        per_slot = max(1, int(match.group(1)) // parallel)
        env["XLA_FLAGS"] = DEVICE_COUNT.sub(
            f"--xla_force_host_platform_device_count={per_slot}", flags
        )
    return [Slot(dict(env), tuple(g) if g is not None else None) for g in groups]
