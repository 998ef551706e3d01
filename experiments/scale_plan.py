"""Capacity plan of the paper-scale SigLIP recipes (``configs/siglip.py:B16``, ...).

Compiles the real train step (``train_state.make_train_step``: towers in bfloat16 with
scanned, rematerialised layers, the sigmoid loss, Adam, FSDP over every device) for a
virtual slice of CPU-emulated devices (``--xla_force_host_platform_device_count``),
compile only: the state and the batch are ``jax.ShapeDtypeStruct`` s
(``train_state.abstract_state``), nothing is materialised. From each compiled step:

* per-device memory, ``memory_analysis()``: arguments + temporaries + outputs that do
  not alias the donated state (the state shard, the batch shard and every buffer the
  step needs at its peak);
* rows per device that fit 16 / 32 / 80 / 141 GiB: the state shard is fixed, the rest
  is taken as proportional to the rows of a (micro-)batch (a slight overestimate of
  the per-row part, so the fitted rows are on the safe side);
* FLOPs per example, ``cost_analysis()`` of the same step lowered without ``scan`` on one
  device (XLA counts a scanned layer once, not ``depth`` times): forward, backward and
  the remat recompute, per example.

Every variant is compiled at batch 32k on its reference slice (:data:`SLICES`: devices
and GradCache micro-batches chosen to fit 32 GiB per device, TPU v4), with the ring loss;
the three default variants also with ``all_gather`` and at batch 512k (same slice, 16x
the micro-batches, so activations stay those of one 32k-sized micro-batch and the
difference is the loss). One more row checks the README's GPU-node command (B/16 on
8 x 80 GiB). Results go to ``scale_plan.json`` (raw) and ``scale_plan.md`` (tables).

    python experiments/scale_plan.py            # ~13 min on 2 CPU cores
    python experiments/scale_plan.py --only=B16_224,gpu_node   # redo a subset
    python experiments/scale_plan.py --render   # the tables again from scale_plan.json

CPU caveat: XLA's CPU compiler is not the TPU/GPU one (different fusion, and it widens
some bfloat16 arithmetic to float32), so the bytes are those of this program on CPU, an
estimate of the accelerator's, not a measurement on it.
"""

from __future__ import annotations

import os

MAX_DEVICES = 128
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={MAX_DEVICES}"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from multimodal_ssl.losses.objectives import make_objective  # noqa: E402
from multimodal_ssl.models.towers import build_model  # noqa: E402
from multimodal_ssl.optim import make_optimizer  # noqa: E402
from multimodal_ssl.scale_recipes import BATCH_SIZE, paper_config  # noqa: E402
from multimodal_ssl.sharding import batch_sharding, make_mesh  # noqa: E402
from multimodal_ssl.train_state import abstract_state, make_train_step  # noqa: E402

HERE = Path(__file__).resolve().parent
GIB = 2**30
VOCAB = 32_000  # the c4_en SentencePiece model of the English SigLIP checkpoints
DEVICE_GIB = (16, 32, 80, 141)
TARGET_GIB = 32
BIG_BATCH = 16 * BATCH_SIZE  # 512k
# Reference slice per variant at batch 32k on 32-GiB devices: (devices, micro-batches).
SLICES: dict[str, tuple[int, int]] = {
    "B16_224": (64, 1),
    "B16_256": (64, 1),
    "B16_384": (64, 4),
    "L16_224": (128, 1),
    "L16_256": (128, 1),
    "L16_384": (128, 2),
    "So400m14_224": (128, 1),
    "So400m14_256": (128, 2),
    "So400m14_384": (128, 4),
}
DEFAULTS = ("B16_224", "L16_256", "So400m14_224")  # the variants' default resolutions
# The README's GPU-node command: (variant, devices, micro-batches, GiB per device).
GPU_NODE = ("B16_224", 8, 4, 80)


NOTES = [
    "- Every variant fits 32 GiB per device on its slice, with a margin for the CPU estimate; "
    "the per-device state (params + Adam, FSDP-sharded) is small next to the activations, so "
    "the rows per device, not the model, set the memory. On fewer devices, raise "
    "`optim.microbatches` until rows per micro-batch are below the \"rows that fit\" column "
    "(GradCache: same gradient, one more forward pass).",
    "- At 32k the loss does not set the peak: ring and all_gather compile to the same bytes, "
    "so the loss's buffers ([512, 32768] logits for all_gather) are smaller than the "
    "towers' backward working set, which is the peak. At 512k all_gather's "
    "[rows, 524288] logits are the peak (B/16: +35 GiB per device over the ring); the "
    "ring's loss memory depends on the rows per device only ([rows, rows] blocks: 0.25 GiB "
    "at 8192 rows), not on B.",
    "- The ring's own growth from 32k to 512k is mostly the input batch: the images arrive "
    "as float32, 8192 rows x 224 x 224 x 3 = 4.6 GiB of arguments per device at 512k on 64 "
    "devices, and the temporaries grow by about as much (GradCache's micro-batch split).",
    "- FLOPs per example include the remat recompute (about 4 forward passes per training "
    "example); GradCache (`optim.microbatches > 1`) adds one more forward. Time per step "
    "= FLOP/example x 32768 / (devices x peak FLOP/s x MFU).",
    "- Before the step constrained activations to the batch axes "
    "(`models.activation_sharding.batch_sharded_activations`), XLA followed the "
    "FSDP-sharded weights: "
    "B/16 at 512 rows x 64 devices compiled to 266 GiB of temporaries per device (every "
    "device held the global batch's activations, split over the width); now 15 GiB.",
]


def _config(variant: str, batch: int, microbatches: int, impl: str) -> ml_collections.ConfigDict:
    config = paper_config(variant)
    config.batch_size = batch
    config.optim.microbatches = microbatches
    config.loss.impl = impl
    return config


def _shard_bytes(tree) -> int:
    """Bytes of one device's shards of the ShapeDtypeStructs in ``tree``."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def _step_and_args(config: ml_collections.ConfigDict, devices: int):
    """The jitted train step of ``config`` on ``devices`` emulated devices and its
    abstract (state, batch) arguments."""
    mesh = make_mesh(config.mesh, jax.devices()[:devices])
    model = build_model(config, VOCAB)
    objective = make_objective(config.loss, tuple(model.towers))
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    size, length = config.data.image_size, config.data.max_text_len
    one = {
        "image": jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        "text": jax.ShapeDtypeStruct((1, length), jnp.int32),
    }
    state = abstract_state(model, objective, tx, config, mesh, one)
    step = make_train_step(model, objective, tx, schedule, config, mesh, state)
    rows = batch_sharding(mesh)
    batch = {
        m: jax.ShapeDtypeStruct((config.batch_size, *s.shape[1:]), s.dtype, sharding=rows)
        for m, s in one.items()
    }
    return step, state, batch


def compile_memory(variant: str, devices: int, batch: int, microbatches: int, impl: str) -> dict:
    """Compiles one train step; per-device bytes and the rows they serve."""
    start = time.perf_counter()
    config = _config(variant, batch, microbatches, impl)
    step, state, inputs = _step_and_args(config, devices)
    mem = step.lower(state, inputs).compile().memory_analysis()
    peak = (
        mem.argument_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
    )
    return {
        "variant": variant,
        "devices": devices,
        "batch": batch,
        "microbatches": microbatches,
        "impl": impl,
        "peak_bytes": peak,
        "state_bytes": _shard_bytes(state),
        "temp_bytes": mem.temp_size_in_bytes,
        "micro_rows": batch // devices // microbatches,
        "compile_s": round(time.perf_counter() - start, 1),
    }


def flops_per_example(variant: str, rows: int = 8) -> float:
    """Training FLOPs of one example (``cost_analysis`` of the unscanned step lowered on
    one device; forward + backward + remat recompute; the loss's share is negligible)."""
    config = _config(variant, rows, 1, "ring")
    config.model.scan = False
    step, state, inputs = _step_and_args(config, 1)
    return step.lower(state, inputs).cost_analysis()["flops"] / rows


def fit_rows(record: dict, gib: float) -> int:
    """Rows per device (per micro-batch) that fit ``gib``: state fixed, the rest per row."""
    per_row = (record["peak_bytes"] - record["state_bytes"]) / record["micro_rows"]
    return max(0, int((gib * GIB - record["state_bytes"]) // per_row))


def run(only: list[str] | None) -> dict:
    def wanted(name: str) -> bool:
        return only is None or name in only

    out = {"memory": [], "flops": {}, "gpu_node": None}
    for variant, (devices, micro) in SLICES.items():
        if not wanted(variant):
            continue
        runs = [(BATCH_SIZE, micro, "ring")]
        if variant in DEFAULTS:
            runs += [
                (BATCH_SIZE, micro, "all_gather"),
                (BIG_BATCH, 16 * micro, "ring"),
                (BIG_BATCH, 16 * micro, "all_gather"),
            ]
        for batch, mb, impl in runs:
            record = compile_memory(variant, devices, batch, mb, impl)
            print(json.dumps(record), flush=True)
            out["memory"].append(record)
        start = time.perf_counter()
        out["flops"][variant] = flops_per_example(variant)
        print(f"{variant}: {out['flops'][variant] / 1e9:.1f} GFLOP/example "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if wanted("gpu_node"):
        variant, devices, micro, _ = GPU_NODE
        out["gpu_node"] = compile_memory(variant, devices, BATCH_SIZE, micro, "ring")
        print(json.dumps(out["gpu_node"]), flush=True)
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def render(results: dict, command: str, minutes: float | None) -> str:
    ring32 = sorted(
        (r for r in results["memory"] if r["batch"] == BATCH_SIZE and r["impl"] == "ring"),
        key=lambda r: list(SLICES).index(r["variant"]),
    )
    lines = [
        "# Capacity plan: paper-scale SigLIP recipes",
        "",
        f"`{command}`" + (f" ({minutes:.0f} min on the 2-core CPU machine, shared)" if minutes
                          else ""),
        "",
        "Compile-only: the real train step of each `configs/siglip.py` variant (bfloat16, "
        "scanned layers, `remat=full`, Adam, FSDP over every device, sigmoid loss) for a "
        "slice of CPU-emulated devices; per-device bytes from `memory_analysis()` "
        "(arguments + temporaries + non-aliased outputs), FLOPs from `cost_analysis()` of "
        "the step lowered without `scan` on one device (forward, backward and remat "
        "recompute). XLA's CPU compiler is not the TPU/GPU one: the bytes are an estimate of "
        "the accelerator's. Method and caveats: `experiments/scale_plan.py`.",
        "",
        f"## Batch {BATCH_SIZE} (32k), ring loss, on each variant's reference slice",
        "",
        f"Reference slice: the devices and GradCache micro-batches (`optim.microbatches`) at "
        f"which the variant fits {TARGET_GIB} GiB per device (TPU v4). \"Rows that fit\": rows "
        "per device per micro-batch within each device size (state shard fixed, the rest "
        "per row).",
        "",
        "| variant | devices | micro-batches | rows/device | GFLOP/example | per-device GiB "
        f"(state) | fits {TARGET_GIB} GiB | rows that fit "
        + " / ".join(f"{g}" for g in DEVICE_GIB) + " GiB | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ring32:
        flops = results["flops"].get(r["variant"])
        fits = r["peak_bytes"] <= TARGET_GIB * GIB
        lines.append(
            f"| `{r['variant']}` | {r['devices']} | {r['microbatches']} | "
            f"{r['batch'] // r['devices']} | "
            f"{'-' if flops is None else f'{flops / 1e9:.0f}'} | {_gib(r['peak_bytes'])} "
            f"({r['state_bytes'] / GIB:.2f}) | {'yes' if fits else '**no**'} | "
            + " / ".join(str(fit_rows(r, g)) for g in DEVICE_GIB)
            + f" | {r['compile_s']:.0f} |"
        )
    loss_rows = [r for r in results["memory"] if r["variant"] in DEFAULTS]
    if any(r["impl"] == "all_gather" for r in loss_rows):
        lines += [
            "",
            "## Ring against all_gather, batch 32k and 512k",
            "",
            "Same slice; 512k with 16x the micro-batches, so the activations are those of the "
            "32k step and the difference between the two is the loss: all_gather holds "
            "[rows, B] logits (and their gradient) and the gathered texts, the ring "
            "[rows, rows] blocks. Where the loss's buffers are smaller than the towers' "
            "backward working set they do not raise the peak and the two are equal.",
            "",
            "| variant | batch | devices | micro-batches | ring GiB | all_gather GiB "
            "| ring saves |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant in DEFAULTS:
            for batch in (BATCH_SIZE, BIG_BATCH):
                pair = {
                    r["impl"]: r
                    for r in loss_rows
                    if r["variant"] == variant and r["batch"] == batch
                }
                if set(pair) != {"ring", "all_gather"}:
                    continue
                ring, gather = pair["ring"], pair["all_gather"]
                lines.append(
                    f"| `{variant}` | {batch} | {ring['devices']} | {ring['microbatches']} | "
                    f"{_gib(ring['peak_bytes'])} | {_gib(gather['peak_bytes'])} | "
                    f"{round((gather['peak_bytes'] - ring['peak_bytes']) / GIB, 1) + 0.0:.1f} GiB |"
                )
    gpu = results.get("gpu_node")
    if gpu:
        variant, devices, micro, gib = GPU_NODE
        lines += [
            "",
            f"## GPU node: `{variant}`, {devices} devices x {gib} GiB, batch {BATCH_SIZE}",
            "",
            f"`--config.optim.microbatches={micro}` ({gpu['micro_rows']} rows per micro-batch): "
            f"{_gib(gpu['peak_bytes'])} GiB per device (state {_gib(gpu['state_bytes'])}); "
            f"{'fits' if gpu['peak_bytes'] <= gib * GIB else '**does not fit**'} {gib} GiB. "
            f"Rows per micro-batch that fit {gib} GiB: {fit_rows(gpu, gib)}.",
        ]
    lines += ["", "## Reading", "", *NOTES]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated variants (and/or gpu_node)")
    parser.add_argument("--render", action="store_true", help="re-render scale_plan.md")
    args = parser.parse_args()
    raw = HERE / "scale_plan.json"
    command = "python experiments/scale_plan.py"
    if args.render:
        saved = json.loads(raw.read_text())
        results, minutes = saved["results"], saved["minutes"]
    else:
        start = time.perf_counter()
        only = args.only.split(",") if args.only else None
        results = run(only)
        minutes = (time.perf_counter() - start) / 60
        if only and raw.exists():  # merge into the previous full run
            saved = json.loads(raw.read_text())
            old = saved["results"]
            keep = [r for r in old["memory"] if r["variant"] not in only]
            results["memory"] = keep + results["memory"]
            results["flops"] = {**old["flops"], **results["flops"]}
            results["gpu_node"] = results["gpu_node"] or old["gpu_node"]
            minutes = saved["minutes"]
        raw.write_text(json.dumps({"results": results, "minutes": minutes}, indent=1) + "\n")
    (HERE / "scale_plan.md").write_text(render(results, command, minutes))
    print((HERE / "scale_plan.md").read_text())


if __name__ == "__main__":
    main()
