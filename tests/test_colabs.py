"""Executes every notebook in colabs/ with nbclient at tiny settings, so none rots.

Each notebook's first code cell is tagged ``parameters``; like papermill, the test
inserts a cell right after it that overrides those values. Kernels run on one CPU
device (the loss-memory notebook emulates its own devices) with matplotlib's Agg
backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

COLABS = Path(__file__).resolve().parents[1] / "colabs"
TESTED = {"quickstart", "embedding_space", "loss_memory"}


def execute(name: str, cwd: Path, **params) -> nbformat.NotebookNode:
    """Runs colabs/<name>.ipynb with ``params`` overriding its parameters cell; returns
    the executed notebook (a failing cell raises CellExecutionError)."""
    nb = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["MPLBACKEND"] = "Agg"
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


def outputs(nb: nbformat.NotebookNode) -> str:
    """All text a notebook printed or displayed."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_every_notebook_is_executed_here():
    assert {p.stem for p in COLABS.glob("*.ipynb")} == TESTED


def test_quickstart_then_embedding_space_on_its_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    common = {"NUM_EXAMPLES": 32, "OVERRIDES": {"loss.impl": "global"}, "WORKDIR": workdir}
    nb = execute("quickstart", tmp_path, TOTAL_STEPS=2, **common)
    text = outputs(nb)
    assert "eval/zeroshot/zeroshot_top1" in text and "eval/retrieval/img2txt_r@1" in text
    assert "32 scenes" in text
    # The second notebook finds the first one's checkpoint and does not train again.
    nb = execute("embedding_space", tmp_path, TOTAL_STEPS=1000, **common)
    text = outputs(nb)
    assert "step 2" in text and "modality_gap" in text


def test_loss_memory(tmp_path):
    nb = execute(
        "loss_memory",
        tmp_path,
        DEVICES=4,
        BATCHES=[64, 256],
        DIM=16,
        LOSSES=["sigmoid"],
        IMPLS=[("global", None), ("ring", 16)],
    )
    assert "| sigmoid | 256 |" in outputs(nb)
