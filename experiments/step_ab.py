"""In-process A/B of the train step: this checkout against another one (e.g. the
previous commit), the same benchmark step as ``throughput.py`` (its sizes, batch and
flags), alternating timed rounds in one process so both see the same machine state.

    git worktree add /tmp/baseline <commit>
    python experiments/step_ab.py --baseline=/tmp/baseline --rounds=5 --steps=8 \\
        --devices=2 --loss=sigmoid

Each side's package is imported from its own tree (``sys.modules`` is cleared between
the two imports; the compiled steps stay alive). The baseline may predate the
N-modalities redesign (``TwoTower``); its step is then built with that API.
Prints examples/s per round and the median ratio (this checkout / baseline).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import throughput as tp  # noqa: E402  (its flags: --batch, --loss, --steps, --rounds, ...)

_BASELINE = flags.DEFINE_string("baseline", None, "Checkout to compare against.")


def _import_from(tree: str) -> None:
    """Makes the next ``import multimodal_ssl`` load the package of ``tree``."""
    for name in [
        m for m in sys.modules if m == "multimodal_ssl" or m.startswith("multimodal_ssl.")
    ]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p not in (ROOT, _BASELINE.value)]
    sys.path.insert(0, tree)


def _two_tower_step(s: dict, batch: dict):
    """The step of a checkout before the N-modalities redesign (TwoTower API)."""
    import jax

    from multimodal_ssl.checkpointing import abstract_like
    from multimodal_ssl.config import base_config
    from multimodal_ssl.optim import make_optimizer
    from multimodal_ssl.sharding import make_mesh, to_global
    from multimodal_ssl.train_state import build_model, init_state, make_train_step

    c = base_config()
    c.batch_size = tp._BATCH.value
    c.data.image_size, c.data.max_text_len = s["image"], s["context"]
    c.model.image = dict(
        width=s["width"],
        depth=s["layers"],
        num_heads=s["heads"],
        mlp_dim=s["mlp"],
        patch_size=s["patch"],
        pool="tok",
    )
    c.model.text = dict(
        width=s["text_width"],
        depth=s["text_layers"],
        num_heads=s["text_heads"],
        mlp_dim=s["text_mlp"],
        pool="last",
    )
    c.model.embed_dim, c.model.dtype = s["embed"], tp._DTYPE.value
    c.loss.name, c.loss.impl = tp._LOSS.value, "global"
    c.optim.warmup_steps, c.optim.grad_clip = 10, None
    mesh = make_mesh({"data": -1, "fsdp": 1, "model": 1}, jax.devices()[: tp._DEVICES.value])
    model = build_model(c, s["vocab"])
    tx, schedule = make_optimizer(c.optim, c.total_steps)
    state = init_state(model, tx, c, mesh)
    step = make_train_step(model, tx, schedule, c, mesh, abstract_like(state))
    holder = [state]

    def run_step():
        holder[0], metrics = step(holder[0], to_global(batch, mesh))
        jax.block_until_ready(metrics["train/loss"])

    return run_step


def build(tree: str, s: dict, batch: dict):
    _import_from(tree)
    import multimodal_ssl.models.towers as towers

    if hasattr(towers, "MultiTower"):
        return tp.make_ours(s, batch)[0]
    return _two_tower_step(s, batch)


def timed(run_step, steps: int) -> float:
    """Examples/s over ``steps`` steps (after one untimed step)."""
    run_step()
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    return steps * tp._BATCH.value / (time.perf_counter() - start)


def _reexec() -> None:
    """Restart once with the emulated devices, threads and malloc tuning of throughput.py
    (they only take effect at process start)."""
    if os.environ.get("_STEP_AB_CHILD"):
        return
    env = dict(
        os.environ,
        _STEP_AB_CHILD="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={tp._DEVICES.value}",
        OMP_NUM_THREADS=str(tp._THREADS.value),
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", tp.MALLOC_TUNABLES),
    )
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def main(argv):
    del argv
    if not _BASELINE.value:
        raise app.UsageError("--baseline=PATH (a checkout to compare against) is required")
    s = tp.SIZES[tp._MODEL.value]
    batch = tp._batch(s, tp._BATCH.value)
    sides = {"baseline": build(_BASELINE.value, s, batch), "this": build(ROOT, s, batch)}
    for run in sides.values():  # compile and warm both before timing
        for _ in range(tp._WARMUP.value):
            run()
    rates = {name: [] for name in sides}
    for r in range(tp._ROUNDS.value):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            rates[name].append(timed(sides[name], tp._STEPS.value))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} ex/s" for n in sides))
    ratios = [a / b for a, b in zip(rates["this"], rates["baseline"], strict=True)]
    print(
        f"median ex/s: baseline {statistics.median(rates['baseline']):.1f}, "
        f"this {statistics.median(rates['this']):.1f}; median ratio this/baseline "
        f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )


def _main(argv) -> None:
    _reexec()
    main(argv)


if __name__ == "__main__":
    app.run(_main)
