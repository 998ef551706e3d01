"""Training throughput: our jitted train step vs open_clip (PyTorch), side by side.

    python experiments/throughput.py                      # benchmark model, batch 256
    python experiments/throughput.py --model=b16 --batch=8 --rounds=1 --steps=3
    python experiments/throughput.py --devices=2          # split the batch over 2 CPU devices
    python experiments/throughput.py --devices=2 --rounds=5 --plot=experiments/throughput.png

Both sides train the same architecture sizes on the same random batches with AdamW and
the same loss, on ``--threads`` CPU threads. Runs alternate (``--rounds`` rounds; the
order flips every round); each run times ``--steps`` steps after ``--warmup`` steps and
reports the median step time. Printed: per-round examples/s of both sides and their
ratio (ours / open_clip), then the median ratio, as a markdown table.

Models (``--model``):

* ``bench``: image 32 px, patch 4, width 128, 4 layers, 2 heads, MLP 512; text context
  16, vocab 1000, width 128, 4 layers, 2 heads; embedding 128 (issue 6's benchmark).
* ``b16``: ViT-B/16 at 224 px and the B text tower (context 64, vocab 32k).

Both sides use a class token for the image (``pool=tok``, no pre-LayerNorm), the last
token for text, no causal mask, and the ``--loss`` (softmax: open_clip ``ClipLoss``;
sigmoid: ``SigLipLoss``). Remaining differences: open_clip's exact-erf GELU (ours: tanh,
as SigLIP), bias-free patch embedding and projections (ours have biases).

open_clip is not a project dependency. Install it for this script only, without
torchvision (its wheels need CUDA PyTorch; open_clip only uses torchvision for image
transforms, which this script replaces by a stub module before importing open_clip)::

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    pip install --no-deps open_clip_torch==3.3.0 ftfy==6.3.1

With ``--open_clip=none`` only our side runs. On a GPU our side also reports MFU:
XLA's FLOP count of the compiled step / step time / ``--peak_tflops``.
"""

from __future__ import annotations

import enum
import importlib.machinery
import os
import statistics
import sys
import time
import types

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# main.py's glibc malloc tuning (not imported: main.py defines required absl flags).
MALLOC_TUNABLES = (
    "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1"
)
_MODEL = flags.DEFINE_enum("model", "bench", ["bench", "b16"], "Architecture sizes.")
_BATCH = flags.DEFINE_integer("batch", 256, "Global batch size.")
_LOSS = flags.DEFINE_enum("loss", "softmax", ["softmax", "sigmoid"], "Contrastive loss.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per run.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per run (compilation, caches).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating (ours, open_clip) run pairs.")
_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads of each framework.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Emulated CPU devices our batch is split over.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Our compute dtype.")
_OPEN_CLIP = flags.DEFINE_enum("open_clip", "auto", ["auto", "none"], "Run open_clip too.")
_PLOT = flags.DEFINE_string("plot", None, "Write a bar chart of the rounds to this PNG.")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Accelerator peak TFLOP/s for MFU (H100 bf16).")

SIZES = {
    "bench": dict(
        image=32,
        patch=4,
        width=128,
        layers=4,
        heads=2,
        mlp=512,
        context=16,
        vocab=1000,
        text_width=128,
        text_layers=4,
        text_heads=2,
        text_mlp=512,
        embed=128,
    ),
    "b16": dict(
        image=224,
        patch=16,
        width=768,
        layers=12,
        heads=12,
        mlp=3072,
        context=64,
        vocab=32_000,
        text_width=768,
        text_layers=12,
        text_heads=12,
        text_mlp=3072,
        embed=768,
    ),
}


def _reexec_with_environment() -> None:
    """Restart once with the malloc tuning of ``main.py`` and the XLA/thread settings,
    which only take effect at process start."""
    if os.environ.get("_THROUGHPUT_CHILD"):
        return
    xla = [f"--xla_force_host_platform_device_count={_DEVICES.value}"]
    env = dict(
        os.environ,
        _THROUGHPUT_CHILD="1",
        XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), *xla]).strip(),
        OMP_NUM_THREADS=str(_THREADS.value),
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", MALLOC_TUNABLES),
    )
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def _batch(s: dict, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1, 1, (n, s["image"], s["image"], 3)).astype(np.float32),
        "text": rng.integers(1, s["vocab"], (n, s["context"])).astype(np.int32),
    }


# ----------------------------------------------------------------------------- ours


def our_config(s: dict):
    """The base config with the benchmark's sizes (image/text towers, loss, batch)."""
    from multimodal_ssl.config import base_config, set_towers
    from multimodal_ssl.losses.objectives import objective_config

    c = base_config()
    c.batch_size = _BATCH.value
    c.data.image_size, c.data.max_text_len = s["image"], s["context"]
    image = dict(
        width=s["width"],
        depth=s["layers"],
        num_heads=s["heads"],
        mlp_dim=s["mlp"],
        patch_size=s["patch"],
        pool="tok",
    )
    text = dict(
        width=s["text_width"],
        depth=s["text_layers"],
        num_heads=s["text_heads"],
        mlp_dim=s["text_mlp"],
        pool="last",
    )
    set_towers(c, {"image": {"type": "vit", **image}, "text": {"type": "text", **text}})
    c.model.embed_dim, c.model.dtype = s["embed"], _DTYPE.value
    c.loss = objective_config(_LOSS.value, impl="global")
    c.optim.warmup_steps, c.optim.grad_clip = 10, None
    return c


def make_ours(s: dict, batch: dict):
    """Returns ``(run_step, flops)``: one step of our jitted train step (host batch ->
    global arrays -> step, blocking), and XLA's FLOP count of the step."""
    import jax

    c = our_config(s)
    from multimodal_ssl.checkpointing import abstract_like
    from multimodal_ssl.losses.objectives import make_objective
    from multimodal_ssl.models.towers import build_model
    from multimodal_ssl.optim import make_optimizer
    from multimodal_ssl.sharding import make_mesh, to_global
    from multimodal_ssl.train_state import init_state, make_train_step

    mesh = make_mesh({"data": -1, "fsdp": 1, "model": 1}, jax.devices()[: _DEVICES.value])
    model = build_model(c, s["vocab"])
    objective = make_objective(c.loss, tuple(model.towers))
    tx, schedule = make_optimizer(c.optim, c.total_steps)
    inputs = {m: jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype) for m, x in batch.items()}
    state = init_state(model, objective, tx, c, mesh, inputs)
    step = make_train_step(model, objective, tx, schedule, c, mesh, abstract_like(state))
    compiled = step.lower(state, to_global(batch, mesh)).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    holder = [state]

    def run_step():
        holder[0], metrics = step(holder[0], to_global(batch, mesh))
        jax.block_until_ready(metrics["train/loss"])

    return run_step, flops


# ------------------------------------------------------------------------- open_clip


def _stub_torchvision() -> None:
    """open_clip imports torchvision only for image transforms and a ResNet helper,
    neither used here; a stub module lets it import beside CPU-only PyTorch."""
    if "torchvision" in sys.modules:
        return
    names = {
        "torchvision.transforms": [
            "Normalize",
            "Compose",
            "RandomResizedCrop",
            "ToTensor",
            "Resize",
            "CenterCrop",
            "ColorJitter",
            "Grayscale",
        ],
        "torchvision.transforms.functional": [],
        "torchvision.ops": [],
        "torchvision.ops.misc": ["FrozenBatchNorm2d"],
    }

    def stub(name: str) -> types.ModuleType:
        module = types.ModuleType(name)  # a spec, so importlib.util.find_spec works
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        sys.modules[name] = module
        return module

    stub("torchvision")
    for module_name, attrs in names.items():
        module = stub(module_name)
        for attr in attrs:
            setattr(module, attr, type(attr, (), {}))
        parent, _, child = module_name.rpartition(".")
        if child == "transforms":  # used in default arguments at import time
            module.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
        setattr(sys.modules[parent], child, module)


def make_open_clip(s: dict, batch: dict):
    """One open_clip training step (forward, loss, backward, AdamW), or None when
    open_clip is not installed."""
    import torch

    _stub_torchvision()
    try:
        import open_clip
    except ImportError as e:
        print(f"open_clip not available ({e}); install it as the module docstring says")
        return None
    torch.set_num_threads(_THREADS.value)
    torch.manual_seed(0)
    sigmoid = _LOSS.value == "sigmoid"
    model = open_clip.CLIP(
        embed_dim=s["embed"],
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=s["layers"],
            width=s["width"],
            head_width=s["width"] // s["heads"],
            mlp_ratio=s["mlp"] / s["width"],
            patch_size=s["patch"],
            image_size=s["image"],
            no_ln_pre=True,
            pool_type="tok",
        ),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=s["context"],
            vocab_size=s["vocab"],
            width=s["text_width"],
            heads=s["text_heads"],
            layers=s["text_layers"],
            mlp_ratio=s["text_mlp"] / s["text_width"],
            no_causal_mask=True,
            pool_type="last",
        ),
        init_logit_bias=-10.0 if sigmoid else None,
        output_dict=True,
    )
    model.train()
    loss_fn = open_clip.loss.SigLipLoss() if sigmoid else open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    texts = torch.from_numpy(batch["text"]).long()

    def run_step():
        out = model(images, texts)
        args = [out["image_features"], out["text_features"], out["logit_scale"]]
        if sigmoid:
            args.append(out["logit_bias"])
        loss = loss_fn(*args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run_step


# ------------------------------------------------------------------------------ main


def _median_step_time(run_step) -> float:
    for _ in range(_WARMUP.value):
        run_step()
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plot(rows: list[tuple[float, float | None]], title: str, path: str) -> None:
    """Grouped bars of examples/s per round, ``rows`` = [(ours, open_clip or None)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, len(rows) + 1)
    ax.bar(x - 0.2, [ours for ours, _ in rows], 0.4, label="ours (JAX)")
    if all(oc is not None for _, oc in rows):
        ax.bar(x + 0.2, [oc for _, oc in rows], 0.4, label="open_clip (PyTorch)")
        for xi, (ours, oc) in zip(x, rows, strict=True):
            ax.annotate(f"{ours / oc:.2f}x", (xi, max(ours, oc)), ha="center", va="bottom")
    ax.set_xticks(x, [f"round {i}" for i in x])
    ax.set_ylabel("examples / s")
    ax.set_title(title.replace(", dtype", ",\ndtype"), fontsize=9)
    ax.set_ylim(0, 1.25 * max(v for row in rows for v in row if v is not None))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> None:
    del argv
    _reexec_with_environment()
    import jax

    s = SIZES[_MODEL.value]
    batch = _batch(s, _BATCH.value)
    ours, flops = make_ours(s, batch)
    theirs = make_open_clip(s, batch) if _OPEN_CLIP.value == "auto" else None
    n = _BATCH.value
    title = (
        f"model {_MODEL.value}, batch {n}, loss {_LOSS.value}, {_THREADS.value} threads, "
        f"{_DEVICES.value} device(s) ({jax.devices()[0].device_kind}), dtype {_DTYPE.value}, "
        f"median of {_STEPS.value} steps per run"
    )
    print(title)
    print("\n| round | ours ex/s | ours step ms | open_clip ex/s | open_clip step ms | ratio |")
    print("|---|---|---|---|---|---|")
    ratios, rows = [], []
    for r in range(_ROUNDS.value):
        order = [("ours", ours), ("open_clip", theirs)]
        times = {}
        for name, run in order if r % 2 == 0 else order[::-1]:
            if run is not None:
                times[name] = _median_step_time(run)
        t_ours, t_oc = times["ours"], times.get("open_clip")
        ratio = t_oc / t_ours if t_oc else float("nan")
        ratios.append(ratio)
        rows.append((n / t_ours, n / t_oc if t_oc else None))
        oc = f"{n / t_oc:.1f} | {1e3 * t_oc:.1f}" if t_oc else "- | -"
        print(f"| {r + 1} | {n / t_ours:.1f} | {1e3 * t_ours:.1f} | {oc} | {ratio:.2f} |")
    if _PLOT.value:
        _plot(rows, title, _PLOT.value)
    if theirs is not None:
        print(f"\nmedian ratio (ours / open_clip examples/s): {statistics.median(ratios):.2f}")
    if jax.default_backend() != "cpu" and flops:
        t = _median_step_time(ours)
        print(
            f"MFU: {flops / t / (_PEAK.value * 1e12):.3f} ({flops / 1e12:.2f} TFLOP/step, "
            f"{1e3 * t:.1f} ms/step, peak {_PEAK.value} TFLOP/s)"
        )


if __name__ == "__main__":
    app.run(main)
