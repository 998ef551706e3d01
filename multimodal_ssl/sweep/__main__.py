"""Command line: expand a recipe's ``get_hyper`` and run, resume or print its runs.

    python -m multimodal_ssl.sweep --config=configs/siglip.py:tiny --workdir=/tmp/sweep \
        [--config.KEY=VALUE ...] [--parallel=N] [--dry_run] [--plot=X_KEY:METRIC] \
        [--curves=METRIC] [--summary_only]

Every run is validated first (a bad swept key or value: one line naming it, exit 2,
nothing launched). Then runs go to ``<workdir>/<name>/`` one after another (or
``--parallel=N`` at once, devices split: :mod:`multimodal_ssl.sweep.devices`); finished
runs are skipped and unfinished ones resumed; ``summary.csv`` / ``summary.md`` (and the
plots, ``curves.png`` / ``curves.md`` of the ``--curves`` metrics against the step,
and ``summary_seeds.md`` with mean ± std over seeds when the seed is swept) are
written at the end. ``--dry_run`` prints one shell command per run and
nothing else on stdout (runs in sweep order: line i is run i, for a scheduler's array
job). ``--summary_only`` writes the summary of whatever the runs' files hold.
Exit status: 0 when every run finished (or a signal stopped the sweep: rerun to
resume), 1 when some failed, 2 for a config error.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Recipe file[:arg] with get_hyper(h).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory; run i in <workdir>/<name>.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at once, devices split between them.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one command per run; run nothing.")
_PLOT = flags.DEFINE_multi_string("plot", [], "X_KEY:METRIC, e.g. batch_size:eval/...")
_CURVES = flags.DEFINE_multi_string("curves", [], "METRIC against the step, e.g. train/loss.")
_SUMMARY_ONLY = flags.DEFINE_bool("summary_only", False, "Only write the summary and plots.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Tracebacks for config errors.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDES: list[str] = []  # the --config.KEY=VALUE flags, passed to every run


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing of the sweep's own flags; ``--config.KEY=VALUE`` are kept aside."""
    rest = []
    for arg in argv:
        if arg.startswith("--config."):
            if "=" not in arg:
                sys.exit(f"error: {arg}: write config overrides as --config.KEY=VALUE")
            _OVERRIDES.append(arg)
        else:
            rest.append(arg)
    try:
        return flags.FLAGS(rest)
    except flags.Error as e:
        sys.exit(f"error: {e}")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    if code == 2:
        print("(rerun with --verbose for the traceback)", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from multimodal_ssl.sweep import curves, devices, plot, runner, seeds, summary
    from multimodal_ssl.sweep.plan import plan

    workdir = _WORKDIR.value
    try:
        runs = plan(_CONFIG.value, workdir, _OVERRIDES)
        launch = not (_DRY_RUN.value or _SUMMARY_ONLY.value)
        slots = devices.slots(_PARALLEL.value) if launch else []
        plots = [plot.parse_spec(spec, [r.overrides for r in runs]) for spec in _PLOT.value]
    except ValueError as e:
        if _VERBOSE.value:
            raise
        _fail(str(e), 2)
    if _DRY_RUN.value:
        for line in runner.shell_commands(runs):
            print(line)
        done = sum(runner.is_finished(r) for r in runs)
        print(f"{len(runs)} runs ({done} finished)", file=sys.stderr)
        return
    os.makedirs(workdir, exist_ok=True)
    outcomes, stopped_by = {}, None
    if not _SUMMARY_ONLY.value:
        outcomes, stopped_by = runner.run_all(runs, slots)
    rows = [summary.collect(r) for r in runs]
    for path in summary.write(rows, workdir):
        print(f"wrote {path}")
    if len({repr(r.overrides.get(seeds.SEED)) for r in rows}) > 1:  # seeds pooled
        print(f"wrote {seeds.write(rows, workdir)}")
    for x_key, metric in plots:
        try:
            print(f"wrote {plot.plot(rows, x_key, metric, workdir)}")
        except ValueError as e:
            _fail(str(e), 2)
    if _CURVES.value:
        try:
            for path in curves.write(runs, rows, _CURVES.value, workdir):
                print(f"wrote {path}")
        except ValueError as e:
            _fail(str(e), 2)
    failed = [n for n, o in outcomes.items() if o != "finished"]
    if failed and stopped_by is None:
        _fail(f"{len(failed)} of {len(runs)} runs did not finish: " + "; ".join(
            f"{n}: {outcomes[n]}" for n in failed), 1)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
