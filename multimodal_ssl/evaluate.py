"""Standalone evaluation: the configured evals on a saved checkpoint or imported weights.

    python -m multimodal_ssl.evaluate --config=configs/siglip.py --checkpoint=WORKDIR \
        [--step=N] [--evals=zeroshot,retrieval] [--output=FILE]
    python -m multimodal_ssl.evaluate --config=configs/siglip.py \
        --pretrained=/path/to/hf_siglip_dir_or.npz --output=FILE

Runs every ``config.evals`` entry (or those named by ``--evals``) exactly as the
trainer does (same data, same metric names ``eval/<name>/<metric>``) and appends one
JSON line ``{"step": N, "eval/...": value, ...}`` to ``--output`` (default for a
checkpoint: ``<workdir>/eval_metrics.jsonl``); the metrics are also printed.

``--checkpoint`` is a training workdir, its ``checkpoints/`` folder or one
``checkpoints/<step>`` folder; only the params are read (not the optimizer state), on
the mesh and with the param shardings of ``config``. ``--pretrained`` is anything
``multimodal_ssl.pretrained.load`` reads (its tokenizer is used when it ships one,
else ``config.data.tokenizer``); ``step`` is then 0. ``config.evals.<name>.*`` and
every other key can be overridden as for training (``--config.evals.zeroshot.max_examples=512``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from multimodal_ssl import pretrained
from multimodal_ssl.builder import Experiment, build_evaluators
from multimodal_ssl.data.modalities import make_processors
from multimodal_ssl.data.tokenizers import Tokenizer, get_tokenizer
from multimodal_ssl.sharding import make_mesh, param_shardings

EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Encoder:
    """What the evals need of a model: ``embed`` (``{modality: inputs [n, ...] -> [n, d]}``,
    L2-normalised numpy); the ``tokenizer`` its texts are encoded with; the training
    ``step`` it comes from (0 for imported weights) and ``source`` (the path it was read
    from). ``embed_images`` / ``embed_texts``: ``embed["image"]`` / ``embed["text"]``."""

    embed: Mapping[str, EmbedFn]
    tokenizer: Tokenizer
    step: int
    source: str

    @property
    def embed_images(self) -> EmbedFn:
        return self.embed["image"]

    @property
    def embed_texts(self) -> EmbedFn:
        return self.embed["text"]


def checkpoint_root(path: str) -> tuple[str, int | None]:
    """The orbax folder of step subfolders that ``path`` names, and the step when
    ``path`` is one step's folder: ``(root, step or None)``. ValueError otherwise."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
        return os.path.dirname(path), int(name)
    if os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path)):
        return path, None
    raise ValueError(
        f"--checkpoint={path}: not a training workdir (with checkpoints/), a checkpoints/ "
        "folder nor a checkpoints/<step> folder"
    )


def load_params(
    exp: Experiment, path: str, step: int | None = None
) -> tuple[Any, int]:
    """The towers' params of a training checkpoint (the newest step, or ``step``, or the
    step folder ``path`` names) for the model of ``exp``, restored straight into the param
    shardings of ``config.sharding`` on its mesh (the objective's scalars, optimizer state
    and data position are not read). Returns ``(params, step)``; ValueError names the bad
    ``--checkpoint`` / ``--step``."""
    config, mesh = exp.config, exp.mesh
    root, path_step = checkpoint_root(path)
    dummy = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), exp.input_specs)
    shapes = jax.eval_shape(lambda rng: exp.model.init(rng, dummy)["params"], jax.random.key(0))
    shardings = param_shardings(shapes, mesh, config.sharding.rules, config.sharding.fsdp_min_size)
    item = {
        "params": jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
        )
    }
    manager = ocp.CheckpointManager(root, item_names=("state", "data"))
    try:
        steps = sorted(manager.all_steps())
        step = step if step is not None else path_step
        if step is None:
            if not steps:
                raise ValueError(f"--checkpoint={path}: no checkpoint under {root}")
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"--step={step}: not among the checkpoints {steps} in {root}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        )
    finally:
        manager.close()
    logging.info("Restored the params of step %d from %s", step, root)
    return restored["state"]["params"], int(step)


def load_checkpoint(
    config: ml_collections.ConfigDict,
    path: str,
    *,
    step: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Encoder:
    """An :class:`Encoder` of a training checkpoint (see :func:`load_params`) for the
    model of ``config`` on the mesh of ``config.mesh`` over ``devices`` (default: all).
    A run initialised from imported towers (LiT) takes their architecture from there."""
    exp = Experiment(config, devices)
    params, step = load_params(exp, path, step)
    root, _ = checkpoint_root(path)
    return Encoder(exp.embedder(params).embed_fns(), exp.tokenizer, step, root)


def load_pretrained(
    config: ml_collections.ConfigDict, path: str, devices: Sequence[jax.Device] | None = None
) -> Encoder:
    """An :class:`Encoder` of imported weights (``pretrained.load(path)``) on the mesh of
    ``config.mesh`` over ``devices`` (default: all); texts are tokenised with the
    checkpoint's tokenizer, else with ``config.data.tokenizer`` (padded to the text
    tower's ``max_text_len``). ValueError naming ``config.data.image_size`` if the evals'
    images would not fit the model."""
    enc = pretrained.load(path, mesh=make_mesh(config.mesh, devices))
    if enc.image_size is not None and enc.image_size != config.data.image_size:
        raise ValueError(
            f"config.data.image_size: {config.data.image_size}, but {path} takes "
            f"{enc.image_size}x{enc.image_size} images; set --config.data.image_size="
            f"{enc.image_size}"
        )
    tokenizer = enc.tokenizer
    if tokenizer is None:  # rows as long as the text tower's positions (it pools the last)
        tokenizer = get_tokenizer(config.data.tokenizer, enc.max_text_len)
    return Encoder({"image": enc.embed_images, "text": enc.embed_texts}, tokenizer, 0, path)


def load_encoder(
    config: ml_collections.ConfigDict,
    *,
    checkpoint: str | None = None,
    pretrained_path: str | None = None,
    step: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Encoder:
    """Exactly one of ``checkpoint`` (see :func:`load_checkpoint`) or
    ``pretrained_path`` (see :func:`load_pretrained`), on ``devices`` (default: all)."""
    if (checkpoint is None) == (pretrained_path is None):
        raise ValueError("give exactly one of --checkpoint and --pretrained")
    if checkpoint is not None:
        return load_checkpoint(config, checkpoint, step=step, devices=devices)
    if step is not None:
        raise ValueError("--step: only applies to --checkpoint")
    return load_pretrained(config, pretrained_path, devices)


def run_evals(
    config: ml_collections.ConfigDict, encoder: Encoder, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Runs ``config.evals`` (or the entries ``names``) with ``encoder`` ->
    ``{"eval/<name>/<metric>": value}``, as the trainer would at the end of training."""
    config = config.copy_and_resolve_references()
    if names:
        unknown = sorted(set(names) - set(config.evals))
        if unknown:
            raise ValueError(f"--evals: {unknown} not in config.evals {sorted(config.evals)}")
        config.evals = ml_collections.ConfigDict({n: config.evals[n] for n in names})
    if not config.evals:
        raise ValueError("config.evals: empty, nothing to evaluate")
    processors = make_processors(config, train=False, tokenizer=encoder.tokenizer)
    results: dict[str, float] = {}
    for evaluator in build_evaluators(config, processors).values():
        results.update(evaluator.run(encoder.embed))
    return results


def default_output(checkpoint: str) -> str:
    """``<workdir>/eval_metrics.jsonl`` for the workdir of ``--checkpoint``."""
    root, _ = checkpoint_root(checkpoint)
    workdir = os.path.dirname(root) if os.path.basename(root) == "checkpoints" else root
    return os.path.join(workdir, "eval_metrics.jsonl")


def write_metrics(path: str, step: int, metrics: dict[str, float]) -> None:
    """Appends ``{"step": step, **metrics}`` as one JSON line to ``path`` (process 0)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"step": int(step), **metrics}) + "\n")


def define_model_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """``--config``, ``--checkpoint``, ``--pretrained`` and ``--step`` (shared with
    ``multimodal_ssl.embed``). Defined only when a CLI runs (or a test asks), so importing
    this module defines no flags."""
    return {
        "config": config_flags.DEFINE_config_file(
            "config", None, "Recipe, e.g. configs/siglip.py", flag_values=flag_values
        ),
        "checkpoint": flags.DEFINE_string(
            "checkpoint",
            None,
            "Workdir, checkpoints/ or checkpoints/<step>.",
            flag_values=flag_values,
        ),
        "pretrained": flags.DEFINE_string(
            "pretrained", None, "transformers SigLIP dir or .npz.", flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step (default: the newest).", flag_values=flag_values
        ),
    }


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """The flags of this CLI: :func:`define_model_flags`, ``--evals``, ``--output``."""
    holders = define_model_flags(flag_values)
    holders["evals"] = flags.DEFINE_list(
        "evals", None, "Names in config.evals (default: all).", flag_values=flag_values
    )
    holders["output"] = flags.DEFINE_string(
        "output", None, "Metrics JSONL file to append to.", flag_values=flag_values
    )
    return holders


def encoder_from_flags(holders: dict[str, flags.FlagHolder]) -> Encoder:
    """The :class:`Encoder` named by the flags of :func:`define_model_flags`."""
    if holders["config"].value is None:
        raise app.UsageError("--config is required")
    return load_encoder(
        holders["config"].value,
        checkpoint=holders["checkpoint"].value,
        pretrained_path=holders["pretrained"].value,
        step=holders["step"].value,
    )


def main(holders: dict[str, flags.FlagHolder], argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output = holders["output"].value
    if output is None:
        if holders["checkpoint"].value is None:
            raise app.UsageError("--output is required with --pretrained")
        output = default_output(holders["checkpoint"].value)
    encoder = encoder_from_flags(holders)
    metrics = run_evals(holders["config"].value, encoder, holders["evals"].value)
    write_metrics(output, encoder.step, metrics)
    if jax.process_index() == 0:
        print(json.dumps({"step": encoder.step, **metrics}, indent=2, sort_keys=True))
        logging.info("Wrote %s", output)


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))
