"""The objectives study (issue 15): the fused eval's scores and ranks against brute force
and the pairwise evals, seed pooling and the clear-margin test, and the markdown table
written from synthetic runs' metrics.jsonl files (experiments/multimodal_objectives.py)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from multimodal_ssl.evals import common, fused, retrieval, zeroshot
from multimodal_ssl.sweep.aggregate import Stat, clear_margin, clear_sign, pool

ROOT = Path(__file__).resolve().parents[1]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fused_scores_are_the_sum_the_multilinear_product_and_minus_the_gram_volume():
    rng = np.random.default_rng(0)
    q = [_unit(rng.normal(size=(5, 6))) for _ in range(3)]
    t = _unit(rng.normal(size=(4, 6)))
    for i, c in itertools.product(range(5), range(4)):
        assert fused.fused_scores(q, t, "sum")[i, c] == pytest.approx(sum(x[i] @ t[c] for x in q))
        mip = np.sum(q[0][i] * q[1][i] * q[2][i] * t[c])
        assert fused.fused_scores(q, t, "mip")[i, c] == pytest.approx(mip)
        vecs = np.stack([t[c], *(x[i] for x in q)])
        volume = math.sqrt(abs(np.linalg.det(vecs @ vecs.T)))
        assert fused.fused_scores(q, t, "volume")[i, c] == pytest.approx(-volume)
    cos = q[0] @ t.T  # one query modality: sum and mip are the cosine; volume sqrt(1 - cos^2)
    np.testing.assert_allclose(fused.fused_scores(q[:1], t, "sum"), cos)
    np.testing.assert_allclose(fused.fused_scores(q[:1], t, "mip"), cos)
    np.testing.assert_allclose(fused.fused_scores(q[:1], t, "volume"), -np.sqrt(1 - cos**2))
    assert fused.query_sets(["image", "audio", "depth"]) == [
        ("image", "audio", "depth"), ("audio", "depth"), ("image", "depth"), ("image", "audio")]
    assert fused.query_sets(["image"]) == [("image",)]


def test_ranks_from_scores_follow_the_pessimistic_tie_rule_of_rank_of_positives():
    rng = np.random.default_rng(1)
    q, c = rng.integers(-2, 3, size=(9, 3)).astype(np.float32), np.eye(3, dtype=np.float32)
    c = np.concatenate([c, c[:1]])  # a duplicate candidate: exact ties
    positives = rng.random((9, 4)) < 0.4
    positives[np.arange(9), rng.integers(0, 4, 9)] = True
    indptr, indices = common.csr_from_groups([np.flatnonzero(p) for p in positives])
    want = common.rank_of_positives(q, c, indptr, indices)
    np.testing.assert_array_equal(fused.ranks_from_scores(q @ c.T, positives), want)


def test_fused_metrics_of_one_modality_equal_the_pairwise_evals():
    """A single query modality with the sum rule is the recipe's own retrieval (same
    caption counts) and zero-shot eval, to the last digit."""
    rng = np.random.default_rng(2)
    n, d, k = 40, 8, 5
    groups = rng.integers(0, 12, n)
    texts = _unit(rng.normal(size=(12, d)))[groups]
    image = _unit(texts + 0.8 * rng.normal(size=(n, d)))
    audio = _unit(rng.normal(size=(n, d)))
    classes, labels = _unit(rng.normal(size=(k, d))), rng.integers(0, k, n)
    got = fused.fused_metrics({"image": image, "audio": audio}, texts, groups, classes, labels)
    pairwise = retrieval.retrieval_metrics(image, texts, [np.flatnonzero(groups == g)
                                                        for g in groups])
    for key in ("img2txt_r@1", "txt2img_r@1", "img2txt_r@5", "txt2img_r@10"):
        assert got[f"sum/{key}"] == pairwise[key]
    zs = zeroshot.zeroshot_metrics(image, classes, labels)
    assert got["sum/img_zeroshot_top1"] == zs["zeroshot_top1"]
    assert got["mip/img_zeroshot_top1"] == zs["zeroshot_top1"]
    assert {"sum/img+audio2txt_r@1", "volume/txt2audio_r@10", "mip/img+audio_zeroshot_top5"} \
        <= set(got)


def test_seed_pooling_and_the_clear_margin():
    s = Stat.of([0.5, 0.6, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3
    assert s.cell() == "0.600 ± 0.100" and math.isnan(Stat.of([0.4]).std)
    assert Stat.of([0.4]).cell() == "0.400"
    pooled = pool([("a", {"m": 1.0, "x": 2.0}), ("a", {"m": 3.0}), ("b", {"m": 5.0})])
    assert pooled["a"]["m"] == Stat(2.0, math.sqrt(2.0), 2) and pooled["a"]["x"].n == 1
    base = Stat(0.10, 0.01, 3)
    assert clear_margin(Stat(0.20, 0.01, 3), base)  # +0.10 > 0.05 and > 3 * 0.014
    assert not clear_margin(Stat(0.14, 0.0, 3), base)  # +0.04 < 0.05
    assert not clear_margin(Stat(0.30, 0.07, 3), base)  # +0.20 < 3 * hypot(0.07, 0.01)
    assert clear_margin(Stat(0.16, math.nan, 1), Stat(0.10, math.nan, 1))  # one seed: std 0
    # Paired differences (a - b per seed) against zero, either way.
    assert clear_sign(Stat(0.10, 0.02, 3)) == 1 and clear_sign(Stat(-0.10, 0.02, 3)) == -1
    assert clear_sign(Stat(-0.10, 0.04, 3)) == 0  # 0.10 < 3 * 0.04
    assert clear_sign(Stat(0.02, 0.001, 3), min_abs=0.01) == 1


@pytest.fixture(scope="module")
def study():
    path = ROOT / "experiments" / "multimodal_objectives.py"
    spec = importlib.util.spec_from_file_location("multimodal_objectives", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_pooled_from_the_runs_metrics_files(study, tmp_path):
    """Synthetic metrics.jsonl for the tiny 3-modality study: the tables show each
    objective's mean (one seed) and the margin column lists the pairs it does not win."""
    from multimodal_ssl.sweep.plan import plan

    runs = plan(str(ROOT / "configs/studies/objectives.py:3mod,tiny"), str(tmp_path / "3mod"))
    assert [r.name for r in runs] == [
        "seed=0,loss=sigmoid_all", "seed=0,loss=symile", "seed=0,loss=untrained"]
    value = {"sigmoid_all": 0.9, "symile": 0.5, "untrained": 0.06}
    for run in runs:
        objective = run.labels["config.loss"]
        metrics = {"step": run.total_steps, "train/loss": 1.0, "train/step_time_ms_p50": 40.0}
        for a, b in study.pairs(study.DATASETS["3mod"]):
            for key in study.retrieval_keys(a, b):
                metrics[key] = value[objective]
        metrics[study.retrieval_keys("audio", "text")[1]] = 0.08  # text->audio: no clear win
        for m in ("image", "audio"):
            metrics[study.zeroshot_key(m)] = value[objective]
        for rule in study.RULES:
            for subset in study.query_sets(study.DATASETS["3mod"]):
                metrics.update({k: 0.25 for k in study.fused_keys(rule, subset).values()})
        os.makedirs(run.workdir)
        with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "train/loss": 9.0}) + "\n")
            f.write(json.dumps(metrics) + "\n")
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            json.dump({}, f)
    pooled, seeds, _ = study.collect("3mod", str(tmp_path), tiny=True)
    assert seeds == {"sigmoid_all": [0], "symile": [0], "untrained": [0]}
    assert pooled["symile"][study.zeroshot_key("audio")].mean == 0.5
    lines = study.dataset_tables("3mod", pooled, seeds)
    table = "\n".join(lines)
    assert "| sigmoid_all | 1 | 0.900 / 0.900 | 0.900 / 0.900 | 0.900 / 0.080 | no: text→audio |" \
        in table
    assert "| **untrained** | 1 | 0.060 / 0.060 |" in table
    assert "| symile | mip | 0.250 | 0.250 | 0.250 |" in table
    assert "| **untrained** | volume | 0.250 / 0.250 |" in table
