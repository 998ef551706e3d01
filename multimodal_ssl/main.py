"""Command-line entry point.

    python -m multimodal_ssl.main --config=configs/siglip.py[:variant] --workdir=DIR \
        [--config.optim.lr=3e-4 ...]

Running the same command again resumes from the newest checkpoint in ``DIR``.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from multimodal_ssl.train import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/siglip.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    workdir = _WORKDIR.value
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    logging.info("Config:\n%s", config)
    final = train(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(final, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
