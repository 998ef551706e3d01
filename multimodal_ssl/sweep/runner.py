"""Running the runs of a sweep as ``python -m multimodal_ssl.main`` subprocesses.

A run is *finished* when its ``metrics.jsonl`` has the line of step ``total_steps`` with
``train/loss`` and, for every evaluator of its config, an ``eval/<name>/...`` metric at that
step (``train`` runs every evaluator at the last step). Finished runs are skipped; any
other run is (re)started with the same command, and ``main`` resumes it from the newest
checkpoint in its workdir. Only the run's own files decide, so deleting checkpoints after
a sweep does not make it run again, and runs launched by a scheduler count too.

Per run the runner writes ``<run>/sweep.log`` (the run's stdout and stderr, appended per
attempt) and ``<run>/sweep.jsonl`` (one line per attempt start and end: command, slot,
seconds, exit code), which the summary sums for the wall time.

The children share the runner's process group, so killing the sweep's group (Ctrl-C in a
terminal, ``kill -9 -PGID``, a scheduler) stops them too. SIGTERM or SIGINT sent to the
runner alone is forwarded as SIGTERM: every running run writes a checkpoint and exits, no
new run starts, and the same sweep command resumes them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from multimodal_ssl.sweep.devices import Slot
from multimodal_ssl.sweep.plan import Run

ATTEMPTS = "sweep.jsonl"
LOG = "sweep.log"


def read_metrics(run_dir: str) -> dict[int, dict[str, float]]:
    """``{step: {name: value}}`` of ``<run_dir>/metrics.jsonl`` (later lines win per key;
    empty when there is none; a torn last line, from a kill mid-write, is ignored)."""
    out: dict[int, dict[str, float]] = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.setdefault(record.pop("step"), {}).update(record)
    return out


def is_finished(run: Run, metrics: dict[int, dict[str, float]] | None = None) -> bool:
    """Whether ``run``'s metrics reach its last step, with every evaluator's metrics."""
    metrics = read_metrics(run.workdir) if metrics is None else metrics
    last = metrics.get(run.total_steps, {})
    return "train/loss" in last and all(
        any(k.startswith(f"eval/{name}/") for k in last) for name in run.evals
    )


def command(run: Run, python: str = sys.executable) -> list[str]:
    """The command line of ``run``."""
    return [python, "-m", "multimodal_ssl.main", *run.args]


def shell_commands(runs: Sequence[Run]) -> list[str]:
    """One shell command line per run (``--dry_run``); the interpreter is ``python`` when
    that is this one on PATH, else this one's path."""
    found = shutil.which("python")
    same = found and os.path.realpath(found) == os.path.realpath(sys.executable)
    python = "python" if same else sys.executable
    return [shlex.join(command(run, python)) for run in runs]


def _record(run: Run, **event) -> None:
    with open(os.path.join(run.workdir, ATTEMPTS), "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")


def _start(run: Run, slot: Slot) -> subprocess.Popen:
    os.makedirs(run.workdir, exist_ok=True)
    cmd = command(run)
    _record(run, event="start", command=cmd, slot=slot.describe())
    with open(os.path.join(run.workdir, LOG), "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        cores = slot.cores
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=slot.env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )


class _Signals:
    """SIGTERM / SIGINT: stop starting runs and forward SIGTERM to the running ones."""

    def __init__(self, running: dict):
        self.name: str | None = None
        self._running = running
        self._previous = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.name = signal.Signals(signum).name
        for proc, *_ in self._running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def _print(line: str) -> None:
    print(line, flush=True)  # visible at once through pipes and logs, and before a kill


def run_all(
    runs: Sequence[Run], slots: Sequence[Slot], log: Callable[[str], None] = _print
) -> tuple[dict[str, str], str | None]:
    """Runs the unfinished ``runs``, ``len(slots)`` at a time, one per free slot, in
    order. -> (``{name: outcome}``, the name of the signal that stopped the sweep or
    None). Outcomes: ``finished`` (before or now), ``failed (exit N; ...)``, ``stopped``
    (exited 0 unfinished: a signal, or a final eval missing) or ``not run`` (a signal
    stopped the sweep first)."""
    outcomes = {}
    pending = []
    for run in runs:
        if is_finished(run):
            outcomes[run.name] = "finished"
            log(f"skip  {run.name} (finished)")
        else:
            pending.append(run)
    running: dict[int, tuple[subprocess.Popen, Run, float]] = {}
    free = list(range(len(slots)))
    with _Signals(running) as signals:
        while (pending and signals.name is None) or running:
            while pending and free and signals.name is None:
                index = free.pop(0)
                run = pending.pop(0)
                resume = os.path.exists(os.path.join(run.workdir, "checkpoints"))
                running[index] = (_start(run, slots[index]), run, time.monotonic())
                where = f" [{slots[index].describe()}]" if len(slots) > 1 else ""
                log(f"{'resume' if resume else 'start'} {run.name}{where}")
            time.sleep(0.2)
            for index, (proc, run, started) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                seconds = time.monotonic() - started
                _record(run, event="end", seconds=seconds, returncode=code)
                if code != 0:
                    outcome = f"failed (exit {code}; see {os.path.join(run.workdir, LOG)})"
                else:
                    outcome = "finished" if is_finished(run) else "stopped"
                outcomes[run.name] = outcome
                log(f"{outcome.split(' ')[0]:<8} {run.name} ({seconds:.0f} s)")
                del running[index]
                free.append(index)
        if signals.name is not None:
            log(f"stopped by {signals.name}; run the same command to resume")
    for run in pending:
        outcomes[run.name] = "not run"
    return outcomes, signals.name
