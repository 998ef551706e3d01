"""``<workdir>/summary.csv`` and ``summary.md``: one row per run, read from its own files.

Columns: ``name``, ``status`` (``finished`` / ``incomplete`` / ``not started``), one per
override key (``config.a.b``, the run's value), ``steps`` (the last step with
``train/loss`` in ``metrics.jsonl``), ``wall_s`` (the seconds of the attempts the sweep
runner saw end, from ``sweep.jsonl``; empty for runs launched otherwise), and per
``eval/*`` metric its final value (at the last step it was logged) and, as
``<metric>:best``, its best: the maximum for top-k / R@k / accuracies, the minimum for
ranks, empty for metrics with no better direction (geometry, probe l2).
The CSV keeps every digit (and whole values); the Markdown table shows 4 significant digits,
``final (best)``, and a value swept with a label (``h.sweep(key, {label: value})``) as its label.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from multimodal_ssl.sweep.plan import PREFIX, Run, format_value
from multimodal_ssl.sweep.runner import ATTEMPTS, is_finished, read_metrics


def direction(metric: str) -> int:
    """+1 if higher is better, -1 if lower is, 0 if neither is defined."""
    leaf = metric.rsplit("/", 1)[-1]
    if leaf.endswith("_rank"):
        return -1
    if re.search(r"top\d|r@\d|accuracy", leaf):
        return 1
    return 0


@dataclasses.dataclass
class Row:
    """What the summary shows of one run."""

    name: str
    status: str
    overrides: dict[str, Any]
    steps: int | None
    wall_s: float | None
    final: dict[str, float]
    best: dict[str, float]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


def _wall_seconds(run_dir: str) -> float | None:
    path = os.path.join(run_dir, ATTEMPTS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        events = [json.loads(line) for line in f if line.strip()]
    ends = [e["seconds"] for e in events if e.get("event") == "end"]
    return sum(ends) if ends else None


def collect(run: Run) -> Row:
    """The summary row of ``run`` from its ``metrics.jsonl`` and ``sweep.jsonl``."""
    metrics = read_metrics(run.workdir)
    trained = [s for s, m in metrics.items() if "train/loss" in m]
    final, best = {}, {}
    for step in sorted(metrics):
        for key, value in metrics[step].items():
            if not key.startswith("eval/"):
                continue
            final[key] = value
            sign = direction(key)
            if sign and (key not in best or sign * value > sign * best[key]):
                best[key] = value
    if is_finished(run, metrics):
        status = "finished"
    else:
        status = "incomplete" if metrics else "not started"
    return Row(
        run.name, status, run.overrides, max(trained) if trained else None,
        _wall_seconds(run.workdir), final, best, dict(run.labels),
    )


def _columns(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    keys = list(dict.fromkeys(k for r in rows for k in r.overrides))
    metrics = sorted({m for r in rows for m in r.final})
    return keys, metrics


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return format_value(value) if not isinstance(value, float) else repr(value)


def _short(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def write(rows: Sequence[Row], workdir: str) -> tuple[str, str]:
    """Writes ``summary.csv`` and ``summary.md`` in ``workdir``; -> their paths."""
    keys, metrics = _columns(rows)
    csv_path = os.path.join(workdir, "summary.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["name", "status", *keys, "steps", "wall_s",
             *(c for m in metrics for c in (m, f"{m}:best"))]
        )
        for r in rows:
            writer.writerow(
                [r.name, r.status, *(_cell(r.overrides.get(k)) for k in keys),
                 _cell(r.steps), _cell(r.wall_s),
                 *(_cell(d.get(m)) for m in metrics for d in (r.final, r.best))]
            )
    md_path = os.path.join(workdir, "summary.md")
    header = ["run", "status", *(k[len(PREFIX) :] for k in keys), "steps", "wall s", *metrics]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [r.name, r.status, *(r.labels.get(k) or _cell(r.overrides.get(k)) for k in keys),
                 _cell(r.steps), "" if r.wall_s is None else f"{r.wall_s:.0f}"]
        for m in metrics:
            final, best = _short(r.final.get(m)), _short(r.best.get(m))
            cells.append(f"{final} ({best})" if best else final)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path
