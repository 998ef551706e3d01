"""k-NN, linear probe and geometry evals: hand-made embeddings with known answers,
naive numpy references, scikit-learn's LogisticRegression, and the evaluator classes
on the fake data layer of ``eval_fakes``."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fakes import TRAIN_LABELS, build, install_fake_data, oracle_images, oracle_texts

from multimodal_ssl import evals
from multimodal_ssl.evals import geometry, linear_probe


@pytest.fixture
def fake_data(monkeypatch):
    return install_fake_data(monkeypatch)


def _quantised(rng, n, d=4):
    """Embeddings on a 1/4 grid: dot products are exact in f32, and ties are common."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float64) / 4


# ---------------------------------------------------------------------------- k-NN

# Scores of 3 test queries x 5 train items; one-hot queries make score[i, j] = bank[j, i].
KNN_SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.1, 0.0],  # k=1 -> label 0; k=3 votes 0, 1, 1 -> 1
        [0.1, 0.2, 0.3, 0.9, 0.8],  # k=1 -> 2; k=3 votes 2, 0, 1: a tie -> lowest class 0
        [0.5, 0.5, 0.1, 0.1, 0.5],  # score ties by index: items 0, 1, 4 -> labels 0, 1, 0
    ]
)
KNN_BANK_LABELS = np.array([0, 1, 1, 2, 0])


def test_knn_known_answers_majority_vote():
    bank = np.concatenate([KNN_SCORES.T, np.zeros((5, 2))], axis=1)  # d = 5 > 3 queries
    queries = np.eye(3, 5)
    m = evals.knn_metrics(
        bank, KNN_BANK_LABELS, queries, np.array([0, 2, 1]), ks=(1, 3), temperature=None
    )
    # k=1 predicts [0, 2, 0] (q2: items 0 and 1 tie, the lower index wins); k=3 [1, 0, 0].
    assert m == {"knn@1_top1": pytest.approx(2 / 3), "knn@3_top1": 0.0}
    m = evals.knn_metrics(
        bank, KNN_BANK_LABELS, queries, np.array([1, 0, 0]), ks=(3,), temperature=None
    )
    assert m == {"knn@3_top1": 1.0}


def test_knn_temperature_weights_the_votes():
    bank, queries, y = KNN_SCORES.T, np.eye(3, 3), np.array([0, 2, 0])
    # q0 with k=3: class 0 weighs 1, class 1 exp(-0.1/T) + exp(-0.2/T): below 1 for
    # T=0.07 (0.297), above for T=1 (1.72).
    sharp = evals.knn_metrics(bank[:, :3], KNN_BANK_LABELS, queries, y, ks=(3,), temperature=0.07)
    flat = evals.knn_metrics(bank[:, :3], KNN_BANK_LABELS, queries, y, ks=(3,), temperature=1.0)
    # q1: weights 1 (class 2), exp(-0.7/T) (0), exp(-0.6/T) (1) -> 2 for both T.
    # q2: classes 0 (items 0, 4) 2 votes of weight 1 vs class 1 (item 1) -> 0.
    assert sharp["knn@3_top1"] == 1.0
    assert flat["knn@3_top1"] == pytest.approx(2 / 3)


def _knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    preds = []
    for q in test_x:
        scores = [float(np.dot(q, t)) for t in train_x]
        order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]
        votes = [0.0] * num_classes
        for j in order:
            w = 1.0 if temperature is None else np.exp((scores[j] - scores[order[0]]) / temperature)
            votes[train_y[j]] += w
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return np.array(preds)


@pytest.mark.parametrize("temperature", [None, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_knn_equals_naive_reference_with_ties(temperature, chunk_size):
    rng = np.random.default_rng(0)
    train_x, test_x = _quantised(rng, 40), _quantised(rng, 30)
    train_y, test_y = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    got = evals.knn_metrics(
        train_x,
        train_y,
        test_x,
        test_y,
        ks=(1, 4, 11),
        temperature=temperature,
        chunk_size=chunk_size,
    )
    for k in (1, 4, 11):
        expected = _knn_reference(train_x, train_y, test_x, k, temperature, 5)
        assert got[f"knn@{k}_top1"] == np.mean(expected == test_y), k


def test_knn_rejects_bad_input():
    x, y = np.eye(3), np.arange(3)
    with pytest.raises(ValueError, match="k: 4 exceeds the 3 train examples"):
        evals.knn_metrics(x, y, x, y, ks=(4,))
    with pytest.raises(ValueError, match="temperature"):
        evals.knn_metrics(x, y, x, y, ks=(1,), temperature=0.0)
    with pytest.raises(ValueError, match="test_y"):
        evals.knn_metrics(x, y, x, y[:2], ks=(1,))


# -------------------------------------------------------------------- linear probe


# Every probe problem below has 400 train rows, 16 features and 5 classes: the L-BFGS
# fit compiles once for all of them (the row subsets are weights, not new shapes).
N, D, C = 400, 16, 5


def _blobs(rng, n, means):
    y = rng.integers(0, len(means), n)
    return (means[y] + rng.normal(size=(n, means.shape[1]))).astype(np.float32), y


def test_logistic_regression_matches_sklearn_solution():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, N, rng.normal(size=(C, D)))
    c = 0.5  # sklearn's C <-> our l2 = 1 / (C N)
    ours_w, ours_b = linear_probe.fit_logistic_regression(x, y, C, [1 / (c * N)])
    ref = sklearn.LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
    logits = x @ ours_w[0] + ours_b[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, ref.predict_proba(x), atol=2e-3)


def test_linear_probe_reaches_sklearn_accuracy():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    means = 0.4 * rng.normal(size=(C, D))
    train_x, train_y = _blobs(rng, N, means)
    test_x, test_y = _blobs(rng, 1000, means)
    ours = evals.linear_probe_metrics(train_x, train_y, test_x, test_y, max_steps=100)
    ref = sklearn.LogisticRegression(max_iter=5000).fit(train_x, train_y).score(test_x, test_y)
    assert 0.4 < ref < 0.95  # a problem with room for error
    assert ours["linear_probe_top1"] >= 0.95 * ref, (ours, ref)
    assert ours["linear_probe_l2"] in linear_probe.DEFAULT_L2_GRID


def test_linear_probe_chooses_l2_on_the_validation_split():
    """The validation cross-entropy of every grid value, recomputed here on the same
    split, is at least the chosen one's."""
    rng = np.random.default_rng(2)
    means = 0.3 * rng.normal(size=(C, D))
    train_x, train_y = _blobs(rng, N, means)
    test_x, test_y = _blobs(rng, 50, means)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    got = evals.linear_probe_metrics(
        train_x, train_y, test_x, test_y, l2_grid=grid, val_fraction=0.25, seed=3, max_steps=100
    )
    xs = (train_x - train_x.mean(0)) / train_x.std(0)
    perm = np.random.default_rng(3).permutation(N)
    val, fit = perm[:100], perm[100:]
    w, b = linear_probe.fit_logistic_regression(xs, train_y, C, grid, rows=fit, max_steps=100)
    val_ce, val_acc = [], []
    for g in range(len(grid)):
        logits = (xs[val] @ w[g] + b[g]).astype(np.float64)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        val_ce.append(-np.mean(np.log(probs[np.arange(len(val)), train_y[val]])))
        val_acc.append(np.mean(np.argmax(logits, 1) == train_y[val]))
    best = int(np.argmin(val_ce))
    assert best not in (0, len(grid) - 1)  # neither extreme: the choice matters
    assert got["linear_probe_l2"] == grid[best]
    assert got["linear_probe_val_top1"] == pytest.approx(val_acc[best])
    # The rows argument really leaves the others out: fitting on `fit` alone agrees.
    w_sub, _ = linear_probe.fit_logistic_regression(
        np.concatenate([xs[fit], xs[fit][:100]]),
        np.concatenate([train_y[fit], train_y[fit][:100]]),
        C,
        [grid[1]],
        rows=np.arange(300),
        max_steps=100,
    )
    np.testing.assert_allclose(w_sub[0], w[1], atol=1e-4)


def test_linear_probe_rejects_bad_input():
    x, y = np.eye(4, dtype=np.float32), np.arange(4)
    with pytest.raises(ValueError, match="val_fraction"):
        evals.linear_probe_metrics(x, y, x, y, val_fraction=1.5)
    with pytest.raises(ValueError, match="l2"):
        linear_probe.fit_logistic_regression(x, y, 4, [-1.0])
    with pytest.raises(ValueError, match="y: expected"):
        linear_probe.fit_logistic_regression(x, y, 3, [1.0])


# ------------------------------------------------------------------------ geometry


def test_geometry_known_answers():
    e = np.eye(6)
    m = evals.geometry_metrics(e, e)
    # Orthonormal: ||e_i - e_j||^2 = 2 -> uniformity log exp(-2 * 2) = -4; equal singular
    # values -> effective rank 6; identical pairs -> alignment 0, no gap.
    assert m == pytest.approx(
        {
            "alignment": 0.0,
            "uniformity_image": -4.0,
            "uniformity_text": -4.0,
            "modality_gap": 0.0,
            "effective_rank_image": 6.0,
            "effective_rank_text": 6.0,
        },
        abs=1e-6,
    )
    m = evals.geometry_metrics(e, -e)
    assert m["alignment"] == pytest.approx(4.0)  # antipodal unit vectors
    # Two clusters: all images e_0, all texts e_1 -> gap sqrt(2), uniformity 0 (collapse),
    # rank one.
    img, txt = np.tile(e[0], (5, 1)), np.tile(e[1], (5, 1))
    m = evals.geometry_metrics(img, txt)
    assert m["modality_gap"] == pytest.approx(np.sqrt(2))
    assert m["alignment"] == pytest.approx(2.0)
    assert m["uniformity_image"] == pytest.approx(0.0, abs=1e-6)
    assert m["effective_rank_image"] == pytest.approx(1.0, abs=1e-6)
    # Singular values (3, 1) -> p = (3/4, 1/4).
    p = np.array([0.75, 0.25])
    erank = geometry.effective_rank(np.diag([3.0, 1.0]))
    assert erank == pytest.approx(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("chunk_size", [None, 1, 6])
def test_geometry_equals_naive_numpy(chunk_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(17, 5))
    y = rng.normal(size=(17, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)

    def naive_uniformity(a, t=2.0):
        terms = [
            np.exp(-t * np.sum((a[i] - a[j]) ** 2))
            for i in range(len(a))
            for j in range(len(a))
            if i != j
        ]
        return np.log(np.mean(terms))

    def naive_erank(a):
        s = np.linalg.svd(a, compute_uv=False)
        p = s / s.sum()
        return np.exp(-np.sum(p * np.log(p)))

    m = evals.geometry_metrics(x, y, chunk_size=chunk_size)
    np.testing.assert_allclose(m["uniformity_image"], naive_uniformity(x), rtol=1e-5)
    np.testing.assert_allclose(m["uniformity_text"], naive_uniformity(y), rtol=1e-5)
    np.testing.assert_allclose(m["effective_rank_image"], naive_erank(x), rtol=1e-6)
    np.testing.assert_allclose(m["effective_rank_text"], naive_erank(y), rtol=1e-6)
    np.testing.assert_allclose(
        m["alignment"],
        np.mean([np.sum((a - b) ** 2) for a, b in zip(x, y, strict=True)]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(m["modality_gap"], np.linalg.norm(x.mean(0) - y.mean(0)), rtol=1e-6)
    assert geometry.uniformity(x, t=0.5) == pytest.approx(naive_uniformity(x, 0.5), rel=1e-5)


def test_geometry_rejects_bad_input():
    with pytest.raises(ValueError, match="text_emb: expected one row per image"):
        evals.geometry_metrics(np.eye(3), np.eye(3)[:2])
    with pytest.raises(ValueError, match=">= 2 embeddings"):
        geometry.uniformity(np.ones((1, 3)))


# ---------------------------------------------------------------------- evaluators


def test_knn_and_linear_probe_evaluators_with_oracle(fake_data):
    ev = build("knn", train_data="fake:train", ks=(1, 3), batch_size=4)
    assert [call[0] for call in fake_data["source"]] == ["fake:test", "fake:train"]
    assert ev.run({"image": oracle_images, "text": oracle_texts}) == {
        "eval/ev/knn@1_top1": 1.0,
        "eval/ev/knn@3_top1": 1.0,
    }

    def constant(images):  # every image the same: all neighbours tie, first train label wins
        return np.ones((len(images), 4), np.float32)

    m = ev.run({"image": constant, "text": oracle_texts})
    assert m["eval/ev/knn@1_top1"] == pytest.approx(
        np.mean(np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]) == TRAIN_LABELS[0])
    )

    lp = build("linear_probe", train_data="fake:train", max_train_examples=8, max_steps=50)
    m = lp.run({"image": oracle_images, "text": oracle_texts})
    assert m["eval/ev/linear_probe_top1"] == 1.0
    assert set(m) == {f"eval/ev/linear_probe_{k}" for k in ("top1", "val_top1", "l2")}
    assert fake_data["batches"][-2][2] == 8  # max_train_examples reached the train split


def test_geometry_evaluator_with_oracle(fake_data):
    m = build("geometry", batch_size=4).run({"image": oracle_images, "text": oracle_texts})
    assert m["eval/ev/alignment"] == 0.0 and m["eval/ev/modality_gap"] == 0.0
    assert m["eval/ev/effective_rank_image"] == pytest.approx(
        geometry.effective_rank(np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]])
    )


@pytest.mark.parametrize(
    "type_name, cfg, match",
    [
        ("knn", {}, r"evals\.ev\.train_data: required source spec"),
        ("knn", {"train_data": "x", "ks": ()}, r"evals\.ev\.ks"),
        ("knn", {"train_data": "x", "ks": (0,)}, r"evals\.ev\.ks"),
        ("knn", {"train_data": "x", "temperature": -1.0}, r"evals\.ev\.temperature"),
        ("knn", {"train_data": "x", "max_train_examples": 0}, r"evals\.ev\.max_train_examples"),
        ("linear_probe", {"train_data": "x", "l2_grid": (-1.0,)}, r"evals\.ev\.l2_grid"),
        ("linear_probe", {"train_data": "x", "val_fraction": 1.0}, r"evals\.ev\.val_fraction"),
        ("linear_probe", {"train_data": "x", "max_steps": 0}, r"evals\.ev\.max_steps"),
        ("geometry", {"uniformity_t": 0.0}, r"evals\.ev\.uniformity_t"),
        ("geometry", {"ks": (1,)}, r"evals\.ev\.ks: unknown key"),
    ],
)
def test_bad_config_raises_naming_the_key(fake_data, type_name, cfg, match):
    with pytest.raises(ValueError, match=match):
        build(type_name, **cfg)
    # The config validator runs the same checks without building anything.
    with pytest.raises(ValueError, match=match):
        evals.get_evaluator(type_name).resolve("ev", {"type": type_name, "data": "d", **cfg})
