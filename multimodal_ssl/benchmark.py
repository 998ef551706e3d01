"""Standard benchmarks on a model: zero-shot classification and caption retrieval.

    python -m multimodal_ssl.benchmark --pretrained=/path/to/hf_siglip_dir \\
        --suite=standard --results=results.jsonl [--benchmarks=imagenet,coco] \\
        [--prompts=siglip] [--tfds_dir=~/tensorflow_datasets] [--max_examples=N]
    python -m multimodal_ssl.benchmark --config=configs/siglip.py --checkpoint=WORKDIR \\
        --suite=zeroshot

Runs every benchmark of ``--suite`` (see ``evals.benchmarks.SUITES``; or the
``config.evals`` of ``--config`` without ``--suite``), prints a markdown table and appends
one JSON line per benchmark to ``--results`` (default for a checkpoint:
``<workdir>/benchmarks.jsonl``)::

    {"model": ..., "step": N, "benchmark": "imagenet", "type": "zeroshot",
     "data": "tfds:imagenet2012:validation", "prompts": "clip", "max_examples": null,
     "metrics": {"zeroshot_top1": 0.76, ...}, "seconds": 812.4}

A benchmark already in the results file for the same model, step and settings is not
run again (a half-finished suite resumes). A benchmark whose dataset is not prepared is
reported in the table and not written (the next run retries it); the exit status is then
1 unless ``--skip_missing``. The model is loaded as ``multimodal_ssl.evaluate`` loads it
(``--config`` defaults to ``config.base_config()`` with ``--pretrained``, whose image
size and tokenizer are then taken from the checkpoint).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from multimodal_ssl import evaluate, pretrained
from multimodal_ssl.builder import build_evaluator
from multimodal_ssl.config import base_config
from multimodal_ssl.data.modalities import make_processors
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.evals import benchmarks
from multimodal_ssl.recipes import benchmark_evals
from multimodal_ssl.sharding import make_mesh

# Table columns: (header, metric), values in percent.
COLUMNS = (
    ("acc@1", "zeroshot_top1"),
    ("acc@5", "zeroshot_top5"),
    ("I→T R@1", "img2txt_r@1"),
    ("I→T R@5", "img2txt_r@5"),
    ("T→I R@1", "txt2img_r@1"),
    ("T→I R@5", "txt2img_r@5"),
)
# The settings of a result that must match for it to count as done.
_KEY_FIELDS = ("model", "step", "benchmark", "type", "data", "prompts", "max_examples")


def load_pretrained_fitted(
    config: ml_collections.ConfigDict, path: str, devices: Sequence[jax.Device] | None = None
) -> evaluate.Encoder:
    """An :class:`evaluate.Encoder` of imported weights; sets ``config.data.image_size``
    to the checkpoint's (so the benchmark images fit it). Texts are tokenised with the
    checkpoint's tokenizer, else ``config.data.tokenizer``."""
    enc = pretrained.load(path, mesh=make_mesh(config.mesh, devices))
    if enc.image_size is not None:
        config.data.image_size = enc.image_size
    tokenizer = enc.tokenizer or get_tokenizer(config.data.tokenizer, enc.max_text_len)
    return evaluate.Encoder(
        {"image": enc.embed_images, "text": enc.embed_texts}, tokenizer, 0, path
    )


def suite_config(
    config: ml_collections.ConfigDict,
    suite: str | None,
    *,
    prompts: str = "clip",
    max_examples: int | None = None,
    batch_size: int | None = None,
) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``evals`` are the benchmarks of ``suite`` (None: its
    own ``evals``, each entry's ``max_examples`` / ``batch_size`` set if given)."""
    config = config.copy_and_resolve_references()
    if suite is not None:
        config.evals = benchmark_evals(
            suite, prompts=prompts, max_examples=max_examples, batch_size=batch_size or 256
        )
        return config
    for cfg in config.evals.values():
        if max_examples is not None:
            cfg.max_examples = max_examples
        if batch_size is not None:
            cfg.batch_size = batch_size
    return config


def read_results(path: str) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _key(row: Mapping[str, Any]) -> tuple:
    return tuple(json.dumps(row.get(k), sort_keys=True) for k in _KEY_FIELDS)


def run_benchmarks(
    config: ml_collections.ConfigDict,
    encoder: evaluate.Encoder,
    results: str,
    *,
    model: str,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Runs ``config.evals`` (or the entries ``names``, in that order) with ``encoder``,
    skipping those already in ``results`` for ``model`` at ``encoder.step`` with the same
    settings, appending each new result to ``results`` as a JSON line. Returns one row per
    benchmark: the result (``"resumed": True`` if read back) or ``{"error": message}``
    for a benchmark whose data could not be opened."""
    names = list(names or config.evals.keys())
    unknown = [n for n in names if n not in config.evals]
    if unknown:
        raise ValueError(f"--benchmarks: {unknown} not among {sorted(config.evals)}")
    done = {_key(r): r for r in read_results(results)}
    processors = make_processors(config, train=False, tokenizer=encoder.tokenizer)
    rows = []
    for name in names:
        cfg = config.evals[name]
        row = {
            "model": model,
            "step": encoder.step,
            "benchmark": name,
            "type": cfg.type,
            "data": cfg.data,
            "prompts": cfg.get("prompts"),
            "max_examples": cfg.get("max_examples"),
        }
        if _key(row) in done:
            rows.append({**done[_key(row)], "resumed": True})
            logging.info("%s: already in %s", name, results)
            continue
        start = time.time()
        try:  # opening the data: a dataset that is not prepared is reported, not fatal
            evaluator = build_evaluator(config, name, processors)
        except ValueError as e:
            logging.warning("%s: not run: %s", name, e)
            rows.append({**row, "error": str(e)})
            continue
        prefix = f"eval/{name}/"
        metrics = {k[len(prefix) :]: v for k, v in evaluator.run(encoder.embed).items()}
        row.update(metrics=metrics, seconds=round(time.time() - start, 1))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`run_benchmarks` as a markdown table (metrics in percent)."""
    header = ["benchmark", "data", *(h for h, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            message = row["error"].splitlines()[0].split(";")[0][:120].replace("|", "/")
            cells = [f"not run: {message}"] + [""] * (len(COLUMNS) - 1)
        else:
            metrics = row["metrics"]
            cells = [f"{100 * metrics[m]:.1f}" if m in metrics else "" for _, m in COLUMNS]
        lines.append("| " + " | ".join([row["benchmark"], row["data"], *cells]) + " |")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """``evaluate``'s model flags plus this CLI's."""
    holders = evaluate.define_model_flags(flag_values)
    define = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer}
    for kind, name, default, help_ in (
        ("string", "suite", None, f"Suite {sorted(benchmarks.SUITES)} (default: config.evals)."),
        ("string", "results", None, "JSONL file of results (appended; read to resume)."),
        ("string", "prompts", "clip", "Zero-shot protocol: clip or siglip."),
        ("string", "tfds_dir", None, "Prepared TFDS datasets (config.data.tfds_dir)."),
        ("string", "model_name", None, "Model name in the results (default: its path)."),
        ("integer", "max_examples", None, "Examples per benchmark (default: all)."),
        ("integer", "batch_size", None, "Eval batch size (default: 256)."),
    ):
        holders[name] = define[kind](name, default, help_, flag_values=flag_values)
    holders["benchmarks"] = flags.DEFINE_list(
        "benchmarks", None, "Run only these (default: all).", flag_values=flag_values
    )
    holders["skip_missing"] = flags.DEFINE_bool(
        "skip_missing",
        False,
        "Exit 0 when some datasets are not prepared.",
        flag_values=flag_values,
    )
    return holders


def main(
    holders: dict[str, flags.FlagHolder],
    argv: list[str],
    devices: Sequence[jax.Device] | None = None,
) -> None:
    """The CLI (see the module docstring) on ``devices`` (default: all)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    value = {k: h.value for k, h in holders.items()}
    if (value["checkpoint"] is None) == (value["pretrained"] is None):
        raise app.UsageError("give exactly one of --checkpoint and --pretrained")
    config = value["config"]
    if config is None:
        if value["checkpoint"] is not None:
            raise app.UsageError("--config is required with --checkpoint (the run's recipe)")
        config = base_config()
    config = suite_config(
        config,
        value["suite"],
        prompts=value["prompts"],
        max_examples=value["max_examples"],
        batch_size=value["batch_size"],
    )
    if value["tfds_dir"]:
        config.data.tfds_dir = os.path.expanduser(value["tfds_dir"])
    results = value["results"]
    if value["pretrained"] is not None:
        if results is None:
            raise app.UsageError("--results is required with --pretrained")
        encoder = load_pretrained_fitted(config, value["pretrained"], devices)
        model = value["model_name"] or os.path.abspath(value["pretrained"])
    else:
        encoder = evaluate.load_checkpoint(
            config, value["checkpoint"], step=value["step"], devices=devices
        )
        results = results or os.path.join(
            os.path.dirname(evaluate.default_output(value["checkpoint"])), "benchmarks.jsonl"
        )
        model = value["model_name"] or encoder.source
    names = value["benchmarks"]
    if names is None and value["suite"] is not None:  # the suite's order
        names = [b.name for b in benchmarks.suite(value["suite"])]
    rows = run_benchmarks(config, encoder, results, model=model, names=names)
    if jax.process_index() == 0:
        print(f"{model} (step {encoder.step}):\n")
        print(markdown_table(rows))
        logging.info("Results in %s", results)
    if any("error" in r for r in rows) and not value["skip_missing"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(functools.partial(main, define_flags()))
