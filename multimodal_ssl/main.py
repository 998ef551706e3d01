"""Command-line entry point.

    python -m multimodal_ssl.main --config=configs/siglip.py[:variant] --workdir=DIR \
        [--config.optim.lr=3e-4 ...]

Running the same command again resumes from the newest checkpoint in ``DIR``. SIGTERM or
Ctrl-C finishes the current step, writes a checkpoint and exits 0. A config or input
error (a ValueError naming the key, file or shape) prints one line and exits 2; a diverged
run, a checkpoint the disk refused and other OS errors (which name their file) print one
line and exit 1. ``--verbose`` adds the traceback.

On Linux the process re-executes itself once with glibc malloc tuned to keep freed
memory (``GLIBC_TUNABLES``, which only takes effect at process start): XLA on CPU
otherwise unmaps and re-maps its step buffers every step, which costs ~1/3 of the
step time of small models. Set ``GLIBC_TUNABLES`` yourself (even to "") to opt out.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from multimodal_ssl import distributed  # defines --coordinator_address etc.; no JAX import

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/siglip.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Tracebacks for config and input errors.")
flags.mark_flags_as_required(["config", "workdir"])

MALLOC_TUNABLES = (
    "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1"
)


def _reexec_with_malloc_tuning() -> None:
    """Restarts this process with ``GLIBC_TUNABLES`` set, unless it is set already."""
    if sys.platform != "linux" or "GLIBC_TUNABLES" in os.environ:
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "multimodal_ssl.main", *sys.argv[1:]], env)


def _override_error(argv: list[str], error: Exception) -> str:
    """A one-line message for a ``--config.KEY=VALUE`` the recipe rejected: the first key
    that does not exist, with its full path and the valid keys there (else the error)."""
    recipe = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if recipe is not None:
        from multimodal_ssl.recipes import load_recipe

        path, _, arg = recipe.partition(":")
        config = load_recipe(path, arg or None)
        for a in argv:
            if not a.startswith("--config."):
                continue
            keys = a[len("--config.") :].split("=", 1)[0].split(".")
            node = config
            for i, key in enumerate(keys):
                if not hasattr(node, "keys") or key not in node:
                    valid = sorted(node.keys()) if hasattr(node, "keys") else []
                    where = ".".join(keys[: i + 1])
                    return f"config.{where}: unknown key (from {a}); valid keys here are {valid}"
                node = node[key]
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a rejected config override reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        if "--verbose" in argv:
            raise
        message = str(e) if isinstance(e, flags.Error) else _override_error(argv, e)
        print(f"error: {message}", file=sys.stderr)
        print("(rerun with --verbose for the traceback)", file=sys.stderr)
        sys.exit(2)


def check_workdir(workdir: str) -> None:
    """Creates ``workdir``; ValueError naming it when it is a file, cannot be created or
    written, or its ``checkpoints`` is a file."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file, not a directory; choose another")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"--workdir={workdir} cannot be created or written ({e.strerror}); choose a "
            "writable directory"
        ) from None
    checkpoints = os.path.join(workdir, "checkpoints")
    if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
        raise ValueError(f"{checkpoints} is a file; move it away or choose another --workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()  # before anything touches a JAX backend
    import jax  # imported here so the re-exec above happens before jax loads

    from multimodal_ssl.checkpointing import CheckpointWriteError
    from multimodal_ssl.config import validate
    from multimodal_ssl.train import TrainingDiverged, train

    config = _CONFIG.value
    workdir = _WORKDIR.value
    try:
        validate(config)  # before config.json is written: a rejected config leaves it alone
        if jax.process_index() == 0:
            check_workdir(workdir)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        logging.info("Config:\n%s", config)
        final = train(config, workdir)
    except (ValueError, TrainingDiverged, CheckpointWriteError, OSError) as e:
        if _VERBOSE.value:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(rerun with --verbose for the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(e, ValueError) else 1)
    if jax.process_index() == 0:
        print(json.dumps(final, indent=2, sort_keys=True))


if __name__ == "__main__":
    _reexec_with_malloc_tuning()
    app.run(main, flags_parser=_parse_flags)
