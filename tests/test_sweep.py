"""Sweeps (multimodal_ssl.sweep): the h-API's expansion, run names, validation before
launch, and an end-to-end tiny sweep that is SIGKILLed and resumed, summarised, and
whose --dry_run command runs as printed."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multimodal_ssl.sweep import hyper as h
from multimodal_ssl.sweep import runner, summary
from multimodal_ssl.sweep.devices import slots
from multimodal_ssl.sweep.plan import plan, run_names

ROOT = Path(__file__).resolve().parents[1]


def test_product_zipit_fixed_chainit_expand_to_the_override_lists():
    swept = h.product([
        h.sweep("config.optim.lr", [1e-3, 2e-3]),
        h.zipit([h.sweep("config.batch_size", [32, 64]), h.fixed("config.seed", 7, length=2)]),
        h.fixed("config.model.dtype", "bfloat16"),
    ])
    lr, bs = "config.optim.lr", "config.batch_size"
    assert list(swept) == [
        {lr: 1e-3, bs: 32, "config.seed": 7, "config.model.dtype": "bfloat16"},
        {lr: 1e-3, bs: 64, "config.seed": 7, "config.model.dtype": "bfloat16"},
        {lr: 2e-3, bs: 32, "config.seed": 7, "config.model.dtype": "bfloat16"},
        {lr: 2e-3, bs: 64, "config.seed": 7, "config.model.dtype": "bfloat16"},
    ]
    # A zipit is one axis named by its first sweep; constant fixed keys are not named.
    assert run_names(swept) == ["lr=0.001,batch_size=32", "lr=0.001,batch_size=64",
                                "lr=0.002,batch_size=32", "lr=0.002,batch_size=64"]
    chained = h.chainit([h.sweep("config.seed", [0]), h.fixed("config.seed", 1, length=2)])
    assert list(chained) == [{"config.seed": 0}, {"config.seed": 1}, {"config.seed": 1}]
    with pytest.raises(ValueError, match="runs 1 and 2 have the same overrides"):
        run_names(chained)
    # Labels are the shortest unique suffix; values that differ past 4 digits keep them all.
    both = h.product([h.sweep("config.model.image.dropout", [0.1]),
                      h.sweep("config.model.text.dropout", [0.123451, 0.123459])])
    assert run_names(both) == ["image.dropout=0.1,text.dropout=0.123451",
                               "image.dropout=0.1,text.dropout=0.123459"]
    with pytest.raises(ValueError, match=r"config.optim.lr: 2, config.seed: 3"):
        h.zipit([h.sweep("config.optim.lr", [1, 2]), h.sweep("config.seed", [0, 1, 2])])
    with pytest.raises(ValueError, match="config.seed is set by both sweep 0 and sweep 1"):
        h.product([h.sweep("config.seed", [0]), h.fixed("config.seed", 1)])
    with pytest.raises(ValueError, match="'config.' followed by the config path"):
        h.sweep("optim.lr", [1e-3])


def test_labelled_values_name_the_runs_through_product_zipit_and_chainit():
    """h.sweep(key, {label: value}) names runs by the labels (values such as a whole loss
    subtree have no short spelling); the values themselves are what the runs get."""
    losses = {"sig": {"name": "sigmoid", "pairs": "all"}, "clip": {"name": "softmax"}}
    swept = h.product([
        h.zipit([h.sweep("config.loss", losses), h.sweep("config.total_steps", [5, 6])]),
        h.sweep("config.seed", [0, 1]),
    ])
    assert [p["config.loss"] for p in swept] == [losses["sig"]] * 2 + [losses["clip"]] * 2
    assert run_names(swept) == ["loss=sig,seed=0", "loss=sig,seed=1",
                                "loss=clip,seed=0", "loss=clip,seed=1"]
    chained = h.chainit([swept, h.sweep("config.loss", {"dcl": {"name": "dcl"}})])
    assert run_names(chained)[-1] == "loss=dcl"
    assert [p["config.loss"]["name"] for p in chained][-1] == "dcl"
    with pytest.raises(ValueError, match="non-empty str labels"):
        h.sweep("config.loss", {"": 1})


def test_recipe_sweeps_list_their_runs():
    """configs/siglip.py's get_hyper(h, arg) sees the :ARG; the two study recipes expand
    (and validate) to the runs their docstrings promise."""
    tiny = plan(str(ROOT / "configs/siglip.py") + ":tiny", "/w")
    assert [r.name for r in tiny] == ["lr=0.001,seed=0", "lr=0.002,seed=0", "lr=0.004,seed=0"]
    assert tiny[0].args == (f"--config={ROOT}/configs/siglip.py:tiny",
                            "--workdir=/w/lr=0.001,seed=0", "--config.optim.lr=0.001",
                            "--config.seed=0")
    assert tiny[0].total_steps == 6
    assert len(plan(str(ROOT / "configs/siglip.py"), "/w")) == 6

    runs = plan(str(ROOT / "configs/studies/siglip_loss_batch.py"), "/unused")
    got = {(r.overrides["config.loss.name"], r.overrides["config.batch_size"],
            r.overrides["config.seed"]) for r in runs}
    assert got == {(loss, b, s) for loss in ("sigmoid", "softmax")
                   for b in (32, 64, 128, 256, 512, 1024) for s in (0, 1, 2)}
    assert len(runs) == 36
    for r in runs:
        assert r.total_steps * r.overrides["config.batch_size"] == 128 * 200  # examples seen
        t_init = math.log(10) if r.overrides["config.loss.name"] == "sigmoid" else math.log(
            1 / 0.07)
        assert r.overrides["config.loss.t_init"] == t_init
    assert runs[0].name == "name=sigmoid,batch_size=32,seed=0"

    runs = plan(str(ROOT / "configs/studies/siglip_bias_init.py"), "/w")
    assert [r.name for r in runs[:4]] == [
        "b_init=0,t_init=0,seed=0", "b_init=0,t_init=0,seed=1", "b_init=0,t_init=0,seed=2",
        "b_init=0,t_init=2.303,seed=0"]
    assert {(r.overrides["config.loss.b_init"], r.overrides["config.loss.t_init"]) for r in runs} \
        == {(b, t) for b in (0.0, -5.0, -10.0) for t in (0.0, math.log(10))}
    assert len(runs) == 18 and len({r.workdir for r in runs}) == 18
    assert {r.total_steps for r in runs} == {200}

    runs = plan(str(ROOT / "configs/studies/siglip2_ablation.py"), "/w")
    arms = {(r.overrides["config.decoder.weight"], r.overrides["config.distill.local_weight"],
             r.overrides["config.distill.masked_weight"]) for r in runs}
    assert arms == {(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.25), (1.0, 1.0, 0.25)}
    assert len(runs) == 12 and {r.total_steps for r in runs} == {200}


def test_parallel_slots_split_gpus_cores_and_emulated_devices():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo"}
    cpu = slots(2, env, cores=[0, 1, 2, 3], gpus=[], tpu=False)
    assert [s.cores for s in cpu] == [(0, 1), (2, 3)]
    assert all(s.env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4 --xla_foo"
               for s in cpu)
    gpu = slots(2, {}, gpus=["0", "1", "2", "3", "4"], tpu=False)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0,1", "2,3"]
    with pytest.raises(ValueError, match="only 1 GPUs are visible"):
        slots(2, {}, gpus=["0"], tpu=False)
    with pytest.raises(ValueError, match="TPU host"):
        slots(2, {}, gpus=[], tpu=True)
    assert slots(1, env)[0].env == env


def _recipe(tmp_path, hyper_body):
    path = tmp_path / "recipe.py"
    path.write_text(
        "import os\n"
        "from multimodal_ssl.recipes import load_recipe\n\n"
        "def get_config(arg=None):\n"
        f"    c = load_recipe({str(ROOT / 'configs/siglip.py')!r}, 'tiny')\n"
        "    c.optim.name = 'adamw'\n"
        "    c.total_steps, c.checkpoint.every_steps = 8, 2\n"
        "    c.evals.zeroshot.max_examples = 32\n"
        "    del c.evals['retrieval']\n"
        "    return c\n\n"
        f"def get_hyper(h):\n    return {hyper_body}\n"
    )
    return str(path)


def _env(tmp_path):
    """One device per run (not the suite's 8) and one compilation cache for all runs."""
    env = dict(os.environ, XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_a_typo_in_a_swept_key_stops_the_sweep_before_any_run(tmp_path):
    """The third run's key is a typo: planning (which the CLI does before launching
    anything) fails naming it, and no run directory is made."""
    recipe = _recipe(tmp_path, "h.chainit([h.sweep('config.seed', [0, 1]), "
                               "h.sweep('config.optim.lrr', [1e-3])])")
    work = tmp_path / "sweep"
    with pytest.raises(ValueError) as error:
        plan(recipe, str(work))
    assert str(error.value).startswith(
        "config.optim.lrr: unknown key (swept by get_hyper in ")
    assert "valid keys here are ['b1', 'b2'" in str(error.value)
    with pytest.raises(ValueError, match=r"run seed=one: .*--config.seed=one: invalid literal"):
        plan(_recipe(tmp_path, "h.sweep('config.seed', [0, 'one'])"), str(work))
    assert not work.exists()


def _stage_finished(run, rng_seed=0):
    """Writes a finished run's metrics.jsonl (a run the sweep must not start again)."""
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, run.total_steps + 1):
            record = {"step": step, "train/loss": float(rng.uniform(1, 10))}
            if step in (4, run.total_steps):
                record.update({"eval/zeroshot/zeroshot_top1": float(rng.uniform()),
                               "eval/zeroshot/mean_rank": float(rng.uniform(1, 9))})
            f.write(json.dumps(record) + "\n")


def _checkpoints(run):
    directory = os.path.join(run.workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(s) for s in os.listdir(directory) if s.isdigit())


def test_a_killed_sweep_resumes_skips_finished_runs_and_summarises(tmp_path):
    """Run seed=0 is finished (staged); the sweep is SIGKILLed (its whole process group)
    during seed=1 after a checkpoint. Rerun: seed=0 is not started again, seed=1 resumes
    from its checkpoint; the summary holds the values of both metrics files; the
    --dry_run command of seed=1 runs as printed."""
    recipe = _recipe(tmp_path, "h.sweep('config.seed', [0, 1])")
    work = str(tmp_path / "sweep")
    env = _env(tmp_path)
    done, killed = plan(recipe, work)
    assert (done.name, killed.name) == ("seed=0", "seed=1")
    _stage_finished(done)

    sweep = subprocess.Popen(
        [sys.executable, "-m", "multimodal_ssl.sweep", f"--config={recipe}", f"--workdir={work}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    deadline = time.time() + 240
    while not _checkpoints(killed):
        assert sweep.poll() is None, sweep.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its runs
    sweep.wait()
    saved = _checkpoints(killed)
    assert saved[-1] < killed.total_steps and not runner.is_finished(killed)
    assert "skip  seed=0 (finished)" in sweep.stdout.read()
    assert not os.path.exists(os.path.join(done.workdir, runner.LOG))

    outcomes, stopped = runner.run_all(plan(recipe, work), slots(1, env), log=lambda s: None)
    assert outcomes == {"seed=0": "finished", "seed=1": "finished"} and stopped is None
    assert not os.path.exists(os.path.join(done.workdir, runner.LOG))  # never started
    with open(os.path.join(killed.workdir, runner.LOG)) as f:
        log = f.read()
    assert log.count("=== ") == 2 and f"Restored checkpoint of step {saved[-1]}" in log
    metrics = runner.read_metrics(killed.workdir)
    assert sorted(s for s, m in metrics.items() if "train/loss" in m) == list(range(1, 9))

    rows = [summary.collect(r) for r in (done, killed)]
    csv_path, md_path = summary.write(rows, work)
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    for run, row in zip((done, killed), table, strict=True):
        steps = runner.read_metrics(run.workdir)
        evals = [(s, m) for s, m in sorted(steps.items()) if "eval/zeroshot/zeroshot_top1" in m]
        assert row["name"] == run.name and row["status"] == "finished"
        assert row["config.seed"] == str(run.overrides["config.seed"])
        assert int(row["steps"]) == 8
        top1 = [m["eval/zeroshot/zeroshot_top1"] for _, m in evals]
        assert float(row["eval/zeroshot/zeroshot_top1"]) == top1[-1]
        assert float(row["eval/zeroshot/zeroshot_top1:best"]) == max(top1)
        ranks = [m["eval/zeroshot/mean_rank"] for _, m in evals if "eval/zeroshot/mean_rank" in m]
        if ranks:  # staged run: lower is better for ranks
            assert float(row["eval/zeroshot/mean_rank:best"]) == min(ranks)
    assert table[0]["wall_s"] == "" and float(table[1]["wall_s"]) > 0
    assert open(md_path).read().count("\n") == 4  # header, rule, two runs

    commands = runner.shell_commands(plan(recipe, work))
    assert len(commands) == 2 and f"--workdir={killed.workdir}" in commands[1]
    rerun = subprocess.run(commands[1], shell=True, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Restored checkpoint of step 8" in rerun.stderr
    with open(os.path.join(killed.workdir, "config.json")) as f:
        assert json.load(f)["seed"] == 1


def test_plot_pools_seeds_per_line_and_draws(tmp_path):
    import numpy as np

    from multimodal_ssl.sweep import plot

    rng = np.random.default_rng(0)
    metric = "eval/zeroshot/zeroshot_top1"
    t_init = {"sigmoid": math.log(10), "softmax": math.log(1 / 0.07)}  # zipped with the loss
    rows = [summary.Row(f"r{i}", "finished", {"config.loss.name": loss,
                                               "config.loss.t_init": t_init[loss],
                                               "config.batch_size": b,
                                               "config.total_steps": 2048 // b,  # zipped with b
                                               "config.seed": s}, 8, None,
                        {metric: float(rng.uniform())}, {})
            for i, (loss, b, s) in enumerate(
                (loss, b, s) for loss in ("sigmoid", "softmax") for b in (64, 32) for s in (0, 1))]
    overrides = [r.overrides for r in rows]
    assert plot.parse_spec(f"batch_size:{metric}", overrides) == ("config.batch_size", metric)
    assert plot.parse_spec(f"loss.name:{metric}", overrides)[0] == "config.loss.name"
    with pytest.raises(ValueError, match="names no single swept key"):
        plot.parse_spec(f"lr:{metric}", overrides)
    got = plot.curves(rows, "config.batch_size", metric)
    for loss in ("sigmoid", "softmax"):
        want = []
        for b in (32, 64):
            values = [r.final[metric] for r in rows
                      if r.overrides["config.loss.name"] == loss
                      and r.overrides["config.batch_size"] == b]
            want.append((b, np.mean(values), min(values), max(values)))
        t = {"sigmoid": "2.303", "softmax": "2.659"}[loss]  # total_steps follows batch_size
        np.testing.assert_allclose(got[f"loss.name={loss}, loss.t_init={t}"], want)
    with pytest.raises(ValueError, match="no run has metric"):
        plot.curves(rows, "config.batch_size", "eval/x")
    path = plot.plot(rows, "config.batch_size", metric, str(tmp_path))
    assert path.endswith("plot_eval_zeroshot_zeroshot_top1_vs_batch_size.png")
    assert os.path.getsize(path) > 1000

    # summary_seeds.md: one row per (loss, batch), mean ± sample std over the 2 seeds.
    from multimodal_ssl.sweep import seeds

    text = open(seeds.write(rows, str(tmp_path))).read().splitlines()
    assert len(text) == 2 + 4
    assert text[0].startswith("| loss.name | loss.t_init | batch_size | total_steps | seeds |")
    pair = [r.final[metric] for r in rows[:2]]
    assert f"{np.mean(pair):.3f} ± {np.std(pair, ddof=1):.3f} (2)" in text[2]
    assert text[2].startswith(f"| sigmoid | {math.log(10)!r} | 64 | 32 | 2 |")


def test_curves_pool_seeds_per_setting_step_by_step(tmp_path):
    """--curves: the per-step mean ± std and best step of each setting equal the values
    written to the runs' metrics.jsonl; the figure is drawn (no training: written files)."""
    import numpy as np

    from multimodal_ssl.sweep import curves
    from multimodal_ssl.sweep.plan import Run

    rng = np.random.default_rng(0)
    metric, steps = "eval/zeroshot/zeroshot_top1", list(range(25, 301, 25))  # 12 steps
    runs, rows, written = [], [], {}
    for b in (0.0, -10.0):
        for seed in (0, 1, 2):
            name = f"b_init={b:g},seed={seed}"
            workdir = tmp_path / name
            workdir.mkdir()
            values = rng.uniform(size=len(steps))
            written[b, seed] = values
            with open(workdir / "metrics.jsonl", "w") as f:
                for s, v in zip(steps, values, strict=True):
                    f.write(json.dumps({"step": s, "train/loss": 1.0 / s, metric: v}) + "\n")
            overrides = {"config.loss.b_init": b, "config.seed": seed}
            runs.append(Run(name, str(workdir), overrides, (), steps[-1], ("zeroshot",)))
            status = "finished" if (b, seed) != (-10.0, 2) else "incomplete"  # not pooled
            rows.append(summary.Row(name, status, overrides, steps[-1], None, {}, {}))
    groups = curves.settings(runs, rows)
    assert {k: len(v) for k, v in groups.items()} == {"loss.b_init=0": 3, "loss.b_init=-10": 2}
    lines = curves.table(groups, metric)
    header = lines[2].split(" | ")
    shown = [int(c.split()[-1]) for c in header if c.startswith("step ")]
    assert shown == steps[1::2]  # 12 logged steps, at most 10 columns: every 2nd, to the last
    for row, (b, n) in zip(lines[4:], ((0.0, 3), (-10.0, 2)), strict=True):
        values = np.stack([written[b, s] for s in range(n)])  # [seeds, steps]
        cells = row.strip("| ").split(" | ")
        for column, step in enumerate(shown):
            at = values[:, steps.index(step)]
            mean, std = at.mean(), at.std(ddof=1)
            assert cells[2 + column] == f"{mean:.3f} ± {std:.3f}"
        assert cells[-1] == str(steps[int(np.argmax(values.mean(axis=0)))])
    loss = curves.table(groups, "train/loss")  # lower is better: the last step
    assert all(line.endswith("| 300 |") for line in loss[4:])
    png, md = curves.write(runs, rows, [metric, "train/loss"], str(tmp_path))
    assert os.path.getsize(png) > 1000 and open(md).read().count("| loss.b_init=") == 4
    with pytest.raises(ValueError, match="no finished run logged metric 'eval/x'"):
        curves.write(runs, rows, ["eval/x"], str(tmp_path))
