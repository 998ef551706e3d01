"""Every multimodal objective on 3 and 4 modalities of ``generated:shapes``, 3 seeds each,
against the untrained model: retrieval, zero-shot, and both with a modality missing.

    python experiments/multimodal_objectives.py --workdir=/tmp/objectives

Runs the study ``configs/studies/objectives.py`` (``:3mod``, then ``:4mod``) through the
sweep machinery (``python -m multimodal_ssl.sweep ... --parallel=2``: two runs at once,
each pinned to one core), then writes ``experiments/multimodal_objectives.md`` (tables of
mean ± std over seeds) and ``experiments/multimodal_objectives.png`` from the runs' own
``metrics.jsonl``. Resumable: rerunning the same command skips finished runs and resumes
the others from their checkpoints (the sweep's resume); Ctrl-C stops the runs after a
checkpoint. JAX's compilation cache (``<workdir>/jax_cache``) lets the later seeds of an
objective load its compiled step.

    --tiny          smoke version: seconds-long runs, 1 seed, 2 objectives + the baseline
                    (writes into the workdir unless --output is given)
    --table_only    only the tables and the plot, from whatever the runs hold
    --datasets      3mod,4mod (default both)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multimodal_ssl.metrics import final_metrics  # noqa: E402
from multimodal_ssl.sweep import summary  # noqa: E402
from multimodal_ssl.sweep.aggregate import (  # noqa: E402
    clear_margin,
    metric_name,
    pool,
    retrieval_keys,
)
from multimodal_ssl.sweep.plan import plan  # noqa: E402

RECIPE = "configs/studies/objectives.py"
DATASETS = {"3mod": ("image", "text", "audio"), "4mod": ("image", "text", "audio", "depth")}
QUERY_ORDER = ("image", "audio", "depth")  # the non-text modalities, as the recipe's fused eval
BASELINE = "untrained"
RULES = ("sum", "mip", "volume")
FUSION = {"symile": "mip", "gram": "volume"}  # else "sum"
MIN_ABS, N_STD = 0.05, 3.0
LOG = "experiment.jsonl"


# ----------------------------------------------------------------------------- metrics


def pairs(modalities) -> list[tuple[str, str]]:
    """The modality pairs of the recipe's retrieval evals (imagebind order: text last)."""
    order = [m for m in ("image", "depth", "audio", "text") if m in modalities]
    return [(a, b) for i, a in enumerate(order) for b in order[i + 1 :]]


def query_sets(modalities) -> list[tuple[str, ...]]:
    """All non-text modalities, then each dropped in turn (evals.fused.query_sets)."""
    queries = [m for m in QUERY_ORDER if m in modalities]
    if len(queries) < 2:
        return [tuple(queries)]
    return [tuple(queries), *(tuple(q for q in queries if q != d) for d in queries)]


def tag(subset) -> str:
    return "+".join(metric_name(m) for m in subset)


def fused_keys(rule: str, subset) -> dict[str, str]:
    t = tag(subset)
    return {
        "zeroshot": f"eval/fused/{rule}/{t}_zeroshot_top1",
        "to_text": f"eval/fused/{rule}/{t}2txt_r@1",
        "from_text": f"eval/fused/{rule}/txt2{t}_r@1",
    }


def zeroshot_key(modality: str) -> str:
    return f"eval/zeroshot_{modality}/zeroshot_top1"


def rule_of(objective: str) -> str:
    return FUSION.get(objective, "sum")


def derived(objective: str, metrics: dict, modalities) -> dict[str, float]:
    """Per-run summaries pooled like metrics: the mean pair R@1 (both directions) and the
    fused zero-shot from every non-text modality (the objective's rule)."""
    keys = [k for a, b in pairs(modalities) for k in retrieval_keys(a, b)]
    out = {}
    if all(k in metrics for k in keys):
        out["derived/mean_pair_r@1"] = sum(metrics[k] for k in keys) / len(keys)
    full = fused_keys(rule_of(objective), query_sets(modalities)[0])["zeroshot"]
    if full in metrics:
        out["derived/fused_all_zeroshot_top1"] = metrics[full]
    return out


def collect(dataset: str, workdir: str, tiny: bool) -> tuple[dict, dict, list]:
    """-> ({objective: {metric: Stat}}, {objective: seeds finished}, config.json of a
    finished run (or None)) of the dataset's runs."""
    spec = f"{RECIPE}:{dataset}" + (",tiny" if tiny else "")
    runs = plan(str(ROOT / spec), os.path.join(workdir, dataset))
    entries, seeds, config = [], {}, None
    for run in runs:
        objective = run.labels["config.loss"]
        seeds.setdefault(objective, [])
        row = summary.collect(run)
        if row.status != "finished":
            continue
        metrics = final_metrics(run.workdir)
        metrics.update(derived(objective, metrics, DATASETS[dataset]))
        if row.wall_s is not None:
            metrics["run/wall_s"] = row.wall_s
        entries.append((objective, metrics))
        seeds[objective].append(run.overrides["config.seed"])
        if config is None and objective != BASELINE:
            with open(os.path.join(run.workdir, "config.json")) as f:
                config = json.load(f)
    return pool(entries), seeds, config


# ------------------------------------------------------------------------------ tables


def _cell(stats: dict, key: str) -> str:
    return stats[key].cell() if key in stats else "-"


def margin_failures(stats: dict, base: dict, modalities) -> list[str] | None:
    """The pair directions where ``stats`` does not beat ``base`` by a clear margin
    (None when a metric is missing)."""
    failures = []
    for a, b in pairs(modalities):
        for (q, c), key in zip(((a, b), (b, a)), retrieval_keys(a, b), strict=True):
            if key not in stats or key not in base:
                return None
            if not clear_margin(stats[key], base[key], min_abs=MIN_ABS, n_std=N_STD):
                failures.append(f"{q}→{c}")
    return failures


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def dataset_tables(dataset: str, pooled: dict, seeds: dict) -> list[str]:
    """The markdown tables of one dataset (see the module docstring of the md)."""
    modalities = DATASETS[dataset]
    objectives = [o for o in seeds if o != BASELINE]
    base = pooled.get(BASELINE, {})
    order = [*objectives, BASELINE]

    header = ["objective", "seeds"]
    header += [f"{a} → {b} / ←" for a, b in pairs(modalities)]
    header += [f"beats untrained on every pair's R@1 (> {MIN_ABS}, > {N_STD:g} std)"]
    rows = []
    for o in order:
        stats = pooled.get(o, {})
        cells = [f"**{o}**" if o == BASELINE else o, str(len(seeds.get(o, [])))]
        for a, b in pairs(modalities):
            fwd, bwd = retrieval_keys(a, b)
            cells.append(f"{_cell(stats, fwd)} / {_cell(stats, bwd)}")
        if o == BASELINE:
            cells.append("(baseline)")
        else:
            failures = margin_failures(stats, base, modalities)
            if failures is None:
                cells.append("n/a (runs missing)")
            else:
                cells.append("yes" if not failures else "no: " + ", ".join(failures))
        rows.append(cells)
    lines = [f"#### Retrieval R@1, every modality pair ({dataset})", ""]
    lines += _table(header, rows)

    zs = [m for m in QUERY_ORDER if m in modalities]
    header = ["objective", *[f"zero-shot from {m}" for m in zs]]
    header += ["mean pair R@1", "ms / step (p50)", "run wall s", "final train loss"]
    rows = []
    for o in order:
        stats = pooled.get(o, {})
        cells = [f"**{o}**" if o == BASELINE else o]
        cells += [_cell(stats, zeroshot_key(m)) for m in zs]
        cells.append(_cell(stats, "derived/mean_pair_r@1"))
        step = stats.get("train/step_time_ms_p50")
        cells.append("-" if o == BASELINE or step is None else step.cell(0))
        wall = stats.get("run/wall_s")
        cells.append("-" if wall is None else f"{wall.mean:.0f}")
        cells.append("-" if o == BASELINE else _cell(stats, "train/loss"))
        rows.append(cells)
    lines += ["", f"#### Zero-shot top-1, time per step ({dataset})", ""]
    lines += _table(header, rows)

    subsets = query_sets(modalities)
    names = ["all: " + tag(subsets[0])]
    names += [f"without {d}: {tag(s)}" for d, s in zip(zs, subsets[1:], strict=False)]
    for what, title in (
        ("zeroshot", "zero-shot top-1"),
        ("retrieval", "retrieval R@1, query → text / text → query"),
    ):
        header = ["objective", "fusion", *names]
        rows = []
        labels = [(o, rule_of(o)) for o in objectives]
        labels += [(BASELINE, r) for r in RULES]
        for o, rule in labels:
            stats = pooled.get(o, {})
            cells = [f"**{o}**" if o == BASELINE else o, rule]
            for s in subsets:
                keys = fused_keys(rule, s)
                if what == "zeroshot":
                    cells.append(_cell(stats, keys["zeroshot"]))
                else:
                    cells.append(f"{_cell(stats, keys['to_text'])} / "
                                 f"{_cell(stats, keys['from_text'])}")
            rows.append(cells)
        lines += ["", f"#### Non-text modalities combined, and one missing: {title} "
                  f"({dataset})", ""]
        lines += _table(header, rows)
    return lines


# -------------------------------------------------------------------------------- plot


def draw(path: str, results: dict) -> None:
    """One panel per dataset: per objective, the mean pair R@1, zero-shot top-1 from each
    non-text modality and from all of them fused; mean over seeds, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3.8 * len(results)), squeeze=False)
    for ax, (dataset, (pooled, seeds)) in zip(axes[:, 0], results.items(), strict=True):
        modalities = DATASETS[dataset]
        order = [o for o in seeds if o != BASELINE] + [BASELINE]
        series = [("mean pair R@1", "derived/mean_pair_r@1")]
        series += [(f"zero-shot from {m}" + (" (4 shapes)" if m == "depth" else ""),
                    zeroshot_key(m)) for m in QUERY_ORDER if m in modalities]
        series += [("zero-shot, non-text combined (its rule)", "derived/fused_all_zeroshot_top1")]
        width = 0.8 / len(series)
        for i, (label, key) in enumerate(series):
            stats = [pooled.get(o, {}).get(key) for o in order]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(order))]
            means = [s.mean if s else math.nan for s in stats]
            errs = [0.0 if not s or math.isnan(s.std) else s.std for s in stats]
            ax.bar(xs, means, width, yerr=errs, capsize=2, label=label)
        ax.set_xticks(range(len(order)), order, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean over seeds")
        ax.set_title(f"{dataset}: {', '.join(modalities)}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(series))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- md


def _size(config: dict | None) -> str:
    if not config:
        return "(no finished run yet)"
    towers = ", ".join(
        f"{m} {t['type']} width {t.get('width')} depth {t.get('depth')}"
        for m, t in config["model"]["towers"].items()
    )
    evals = {e.get("max_examples") for e in config["evals"].values()}
    return (
        f"{config['total_steps']} steps of batch {config['batch_size']}, "
        f"{config['data']['image_size']} px images, towers: {towers}; embeddings "
        f"{config['model']['embed_dim']}-d; {config['optim']['name']} lr "
        f"{config['optim']['lr']} (warmup {config['optim']['warmup_steps']}, "
        f"{config['optim']['schedule']}); evals on {'/'.join(map(str, sorted(evals)))} held-out "
        f"scenes, once at the last step"
    )


def _timing(workdir: str) -> list[str]:
    path = os.path.join(workdir, LOG)
    if not os.path.exists(path):
        return ["(no timing log)"]
    with open(path) as f:
        attempts = [json.loads(line) for line in f if line.strip()]
    seconds = sum(a["seconds"] for a in attempts)
    others = [x for a in attempts for x in a.get("other_cores", [])]
    cores = attempts[-1]["cores"]
    text = (
        f"Wall time of the experiment: {seconds / 60:.1f} min over {len(attempts)} "
        f"invocation(s) (last started {attempts[-1]['started']}), --parallel="
        f"{attempts[-1]['parallel']} on {cores} cores."
    )
    if others:
        median = statistics.median(others)
        text += (f" Other processes kept a median of {median:.2f} cores busy (max "
                 f"{max(others):.2f}; sampled every 30 s from /proc while the study ran).")
        if median > 0.25:
            text += (" **The machine was shared**: wall times and ms/step are inflated and "
                     "not comparable across objectives.")
    return [text]


def write_md(path: str, results: dict, configs: dict, command: str, workdir: str,
             tiny: bool) -> None:
    lines = [
        "# Multimodal objectives on 3 and 4 modalities of generated:shapes" + (
            " — SMOKE TEST (tiny sizes, not results)" if tiny else ""),
        "",
        "Every objective trains the same towers with the same batch, steps, optimizer and "
        "learning rate on a dataset; 3 seeds each (the seed sets the initial params and the "
        "data order); an untrained model of the same config is the baseline. Reproduce "
        "(resumable: rerun the same command after an interruption):",
        "",
        "```",
        command,
        "```",
        "",
        "which runs, for `D` in `3mod` and `4mod`, "
        f"`python -m multimodal_ssl.sweep --config={RECIPE}:D --workdir=WORKDIR/D "
        "--parallel=2` and writes this file and the plot from the runs' `metrics.jsonl`.",
        "",
    ]
    for dataset, config in configs.items():
        lines += [f"**Size ({dataset}: {', '.join(DATASETS[dataset])}).** {_size(config)}.", ""]
    lines += _timing(workdir) + [""]
    lines += [
        "**Objectives** (configs/studies/objectives.py has each one's config): "
        "`sigmoid_all` / `softmax_all` SigLIP / CLIP over every modality pair; "
        "`sigmoid_anchor` SigLIP against the image only (ImageBind); `dcl` decoupled "
        "contrastive over every pair; `symile` Symile with O(n²) negatives (every combination "
        "of the other modalities' rows); `gram` GRAM (text anchor); `decur` DeCUR's "
        "cross-modal term for each pair with the image (no intra-modal views); `slip` "
        "sigmoid over every pair + SimCLR on two views of the image (the only run with "
        "augmentation: mild random shifts of the image, which SimCLR needs); `matryoshka` "
        "sigmoid over every pair at nested prefixes (evaluated at full width). Each keeps its "
        "recipe's initial temperature (SigLIP also its bias -10). "
        "**untrained**: the same model after one step at learning rate 0 (the warmup starts "
        "at 0), i.e. its initial params; one per seed (the towers' init depends on the seed "
        "only).",
        "",
        "**Metrics.** Held-out scenes (`generated:shapes:test`, combinations never seen in "
        "training). Retrieval counts a candidate correct when it has the query's caption "
        "(scenes differing only in sub-cell jitter and shade are indistinguishable to all "
        "modalities but the image). Zero-shot: 24 shape+colour classes (depth: 4 shapes, it "
        "carries no colour). Cells are mean ± sample std over the seeds (ddof 1).",
        "",
        "**One modality missing at test time.** The query is an example's non-text "
        "modalities combined (image, audio, and depth in 4mod); each column drops one of "
        "them, as if it were missing at test time (in 3mod that leaves a single modality). "
        "A text (caption for retrieval, class prompt for zero-shot) is scored against the "
        "available modalities by the rule each objective trains: `sum` of the pairwise "
        "cosine scores (late fusion) for the pairwise objectives (and DeCUR, SLIP, "
        "Matryoshka); `mip`, the multilinear inner product Σ_d t_d Π_m q_m,d, for Symile "
        "(as experiments/literature_table.py scores it; with a modality dropped it is a "
        "lower-order product than the one trained; with one modality left it is the "
        "cosine); `volume`, minus the Gram volume of the text and the query embeddings, for "
        "GRAM (its training score). The untrained rows give each rule's baseline. "
        "`multimodal_ssl/evals/fused.py` computes all three for every run.",
        "",
        f"**Clear margin.** An objective beats the untrained model on a pair direction when "
        f"its mean R@1 exceeds the untrained mean by more than {MIN_ABS} and by more than "
        f"{N_STD:g} × sqrt(std_objective² + std_untrained²) (seed stds; a single seed counts "
        f"as std 0). The column lists the pair directions where it does not.",
        "",
        f"![objectives]({Path(path).with_suffix('.png').name})",
        "",
    ]
    for dataset, (pooled, seeds) in results.items():
        lines += [f"### {dataset}: {', '.join(DATASETS[dataset])}", ""]
        lines += dataset_tables(dataset, pooled, seeds) + [""]
    Path(path).write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------- main


def cpu_seconds(root: int) -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds used by the process tree
    of ``root``, reaped children included) from /proc; None where there is none."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = sum(v) - v[3] - v[4]  # all but idle and iowait
        parent, used = {}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(pid)] = int(fields[1])
            used[int(pid)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    except (OSError, ValueError, AttributeError):
        return None

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parent.get(pid, 0)
        return False

    return busy / tick, sum(t for pid, t in used.items() if ours(pid)) / tick


def run_sweeps(args, datasets) -> int:
    """Runs (or resumes) each dataset's sweep; -> the worst exit status."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.workdir, "jax_cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Cores busy with other processes than the study's, sampled every 30 s.
    status, others, started, proc = 0, [], time.time(), None
    try:
        for dataset in datasets:
            spec = f"{RECIPE}:{dataset}" + (",tiny" if args.tiny else "")
            cmd = [sys.executable, "-m", "multimodal_ssl.sweep", f"--config={spec}",
                   f"--workdir={os.path.join(args.workdir, dataset)}",
                   f"--parallel={args.parallel}"]
            print("+", shlex.join(cmd), flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
            last = (time.time(), cpu_seconds(os.getpid()))
            while proc.poll() is None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
                now = (time.time(), cpu_seconds(os.getpid()))
                if last[1] and now[1] and now[0] - last[0] > 5:
                    busy, mine = (b - a for a, b in zip(last[1], now[1], strict=True))
                    others.append(max(0.0, busy - mine) / (now[0] - last[0]))
                last = now
            status = max(status, proc.returncode)
    except KeyboardInterrupt:
        if proc is not None:
            proc.wait()  # the sweep forwards the signal: its runs checkpoint and exit
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        with open(os.path.join(args.workdir, LOG), "a") as f:
            f.write(json.dumps({
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
                "seconds": time.time() - started, "other_cores": others,
                "cores": os.cpu_count(), "parallel": args.parallel,
                "datasets": list(datasets),
            }) + "\n")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/objectives")
    parser.add_argument("--datasets", default="3mod,4mod")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="smoke version (seconds per run)")
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("--output", help="markdown file (the plot goes next to it, .png)")
    args = parser.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {unknown}; known {sorted(DATASETS)}")
    default = Path(args.workdir) if args.tiny else ROOT / "experiments"
    output = args.output or str(default / "multimodal_objectives.md")
    os.makedirs(args.workdir, exist_ok=True)
    status = 0 if args.table_only else run_sweeps(args, datasets)

    results, configs = {}, {}
    for dataset in datasets:
        pooled, seeds, config = collect(dataset, args.workdir, args.tiny)
        results[dataset], configs[dataset] = (pooled, seeds), config
    flags = [f"--workdir={args.workdir}"]
    flags += [f"--datasets={args.datasets}"] if datasets != list(DATASETS) else []
    flags += [f"--parallel={args.parallel}"] if args.parallel != 2 else []
    flags += ["--tiny"] if args.tiny else []
    flags += [f"--output={args.output}"] if args.output else []
    command = shlex.join(["python", "experiments/multimodal_objectives.py", *flags])
    write_md(output, results, configs, command, args.workdir, args.tiny)
    draw(str(Path(output).with_suffix(".png")), results)
    print(Path(output).read_text())
    print(f"wrote {output} and {Path(output).with_suffix('.png')}")
    if status:
        sys.exit(f"some runs did not finish (sweep exit {status}); rerun to resume them")


if __name__ == "__main__":
    main()
