"""Multi-process (multi-host) start-up: join JAX's multi-controller runtime.

Every process runs the same command; after :func:`initialize` ``jax.devices()`` lists
the devices of all processes, the mesh spans them, each process loads its own shard
of the training data (``shard_index = jax.process_index()``) and contributes its rows
of each global batch (``sharding.to_global``). Metrics, TensorBoard and ``config.json``
are written by process 0 only; orbax checkpoints are written cooperatively (each
process its own array shards and its data-iterator state).

How the process group is found, in order:

* ``--coordinator_address``, ``--num_processes``, ``--process_id`` (or the environment
  variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``):
  explicit, e.g. GPU nodes launched by hand or by a scheduler script;
* ``--multihost``: ``jax.distributed.initialize()`` auto-detects the rest (Cloud TPU
  pods, SLURM, Open MPI);
* neither: a single process; nothing to do.
"""

from __future__ import annotations

import os

from absl import flags, logging

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0's coordinator for multi-process runs (env JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of a multi-process run (env JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes) (env JAX_PROCESS_ID)."
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join a multi-process run, auto-detecting what the flags above leave unset "
    "(Cloud TPU pods, SLURM, Open MPI).",
)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Calls ``jax.distributed.initialize`` when a multi-process run is configured.

    Unset arguments fall back to ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``. Without ``auto`` the three must be given together. Must run
    before anything touches a JAX backend. Returns True when it joined a process group.
    """
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    explicit = {
        "coordinator_address": coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = {k: v for k, v in explicit.items() if v is not None}
    if not auto and not given:
        return False
    if not auto and len(given) != len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(
            f"multi-process run: {sorted(given)} given but {missing} missing; set all three "
            "(flags --coordinator_address/--num_processes/--process_id or env "
            "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID), or --multihost to "
            "auto-detect them"
        )
    import jax  # local: callers may re-exec the interpreter before JAX loads

    jax.distributed.initialize(**explicit)
    logging.info(
        "Process %d of %d; %d local and %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def initialize_from_flags() -> bool:
    """:func:`initialize` with the command-line flags of this module (parsed by absl)."""
    return initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_MULTIHOST.value
    )
