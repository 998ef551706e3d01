"""Evals: metric functions on hand-made embeddings with known answers, a brute-force
reference for retrieval, and the evaluator classes on fake sources and embedders."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from eval_fakes import CLASSES, FakeSource, build, install_fake_data, oracle_images, oracle_texts

from multimodal_ssl import evals
from multimodal_ssl.evals import common, retrieval

# ----------------------------------------------------------------------- retrieval

# Scores image i x text j for 4 images with one caption each (text j -> image j).
# Using one-hot images makes score[i, j] = text_emb[j, i] exactly, so text_emb = S.T.
SCORES = np.array(
    [
        [0.9, 0.1, 0.2, 0.0],  # img0: correct 0.9 is the top -> rank 1
        [0.8, 0.5, 0.7, 0.1],  # img1: 0.8, 0.7 beat the correct 0.5 -> rank 3
        [0.0, 0.3, 0.6, 0.2],  # img2: rank 1
        [0.4, 0.2, 0.3, 0.35],  # img3: 0.4 beats 0.35 -> rank 2
    ]
)
# Columns as text queries: txt0 rank 1, txt1 rank 1, txt2 (0.7 > 0.6) rank 2, txt3 rank 1.


def test_identity_embeddings_give_perfect_recall():
    emb = np.eye(7, dtype=np.float32)
    m = evals.retrieval_metrics(emb, emb, np.arange(7))
    assert m == {
        **{f"{d}_r@{k}": 1.0 for d in ("img2txt", "txt2img") for k in (1, 5, 10)},
        **{f"{d}_{s}_rank": 1.0 for d in ("img2txt", "txt2img") for s in ("mean", "median")},
    }


def test_known_ranks_give_exact_recall_and_rank_stats():
    m = evals.retrieval_metrics(np.eye(4), SCORES.T, np.arange(4), ks=(1, 2, 3, 10))
    # img2txt ranks [1, 3, 1, 2]; txt2img ranks [1, 1, 2, 1].
    assert m["img2txt_r@1"] == 0.5
    assert m["img2txt_r@2"] == 0.75
    assert m["img2txt_r@3"] == 1.0
    assert m["img2txt_mean_rank"] == 1.75
    assert m["img2txt_median_rank"] == 1.5
    assert m["txt2img_r@1"] == 0.75
    assert m["txt2img_r@2"] == 1.0
    assert m["txt2img_mean_rank"] == 1.25
    assert m["txt2img_median_rank"] == 1.0


def test_correct_item_at_rank_three_for_some_queries():
    # 10 images; queries 0, 3, 6 see two wrong texts above their own caption.
    n = 10
    scores = np.eye(n) * 2.0
    for q in (0, 3, 6):
        scores[q, (q + 1) % n] = scores[q, (q + 2) % n] = 3.0
    m = evals.retrieval_metrics(np.eye(n), scores.T, np.arange(n))
    assert m["img2txt_r@1"] == pytest.approx(0.7)
    assert m["img2txt_r@5"] == 1.0
    assert m["img2txt_mean_rank"] == pytest.approx((7 * 1 + 3 * 3) / 10)
    assert m["img2txt_median_rank"] == 1.0


def test_ties_count_against_the_query():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.3, 0.3]])
    m = evals.retrieval_metrics(np.eye(3), scores.T, np.arange(3), ks=(1, 2))
    # img0: wrong txt1 ties the correct 0.5 -> rank 2; img1: tie with txt2 -> 2;
    # img2: all three equal -> rank 3.
    assert m["img2txt_r@1"] == 0.0
    assert m["img2txt_r@2"] == pytest.approx(2 / 3)
    assert m["img2txt_mean_rank"] == pytest.approx(7 / 3)
    # txt0 [0.5, 0.2, 0.3] rank 1; txt1 [0.5, 0.7, 0.3] rank 1; txt2 [0.1, 0.7, 0.3] rank 2.
    assert m["txt2img_mean_rank"] == pytest.approx(4 / 3)
    # Everything mapped to one vector: every query is last.
    same = np.ones((5, 3))
    collapsed = evals.retrieval_metrics(same, same, np.arange(5))
    assert collapsed["img2txt_r@1"] == 0.0 and collapsed["img2txt_mean_rank"] == 5.0


def test_several_captions_per_image():
    # 2 images, texts 0,1 describe image 0 and texts 2,3 image 1.
    scores = np.array([[0.2, 0.9, 0.5, 0.1], [0.8, 0.3, 0.1, 0.4]])
    m = evals.retrieval_metrics(np.eye(2), scores.T, np.array([0, 0, 1, 1]), ks=(1,))
    # img0: best caption 0.9 beats all -> 1; img1: best caption 0.4 < wrong 0.8 -> 2.
    assert m["img2txt_mean_rank"] == 1.5 and m["img2txt_r@1"] == 0.5
    # txt0 [0.2 vs 0.8] 2; txt1 1; txt2 [0.1 vs 0.5] 2; txt3 1.
    assert m["txt2img_mean_rank"] == 1.5 and m["txt2img_r@1"] == 0.5


def test_text_of_several_images_and_images_without_text():
    # txt0 describes images 0 and 1; image 2 has no text (a distractor only).
    scores = np.array([[0.1, 0.6], [0.9, 0.2], [0.95, 0.3]])
    m = evals.retrieval_metrics(np.eye(3), scores.T, [[0, 1], [1]], ks=(1,))
    # img0: correct 0.1 < wrong 0.6 -> 2; img1: best correct 0.9 -> 1; img2 not a query.
    assert m["img2txt_mean_rank"] == 1.5
    # txt0: best correct 0.9 < distractor 0.95 -> 2; txt1: correct 0.2, wrong 0.6 and
    # 0.3 -> 3.
    assert m["txt2img_mean_rank"] == 2.5 and m["txt2img_r@1"] == 0.0


def _quantised(rng, n, d=4):
    """Embeddings on a 1/4 grid: dot products are exact in f32, and ties are common."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float64) / 4


def _brute_force_ranks(queries, candidates, positives):
    ranks = []
    for q, pos in zip(queries, positives, strict=True):
        best = max(float(np.dot(q, candidates[p])) for p in pos)
        wrong = sum(
            1 for j, c in enumerate(candidates) if j not in pos and float(np.dot(q, c)) >= best
        )
        ranks.append(1 + wrong)
    return np.array(ranks)


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
def test_retrieval_equals_brute_force_reference(chunk_size):
    rng = np.random.default_rng(0)
    n_img, n_txt = 23, 37
    img, txt = _quantised(rng, n_img), _quantised(rng, n_txt)
    t2i = rng.integers(0, n_img - 3, size=n_txt)  # the last 3 images have no text
    i2t = [set(np.flatnonzero(t2i == i)) for i in range(n_img)]
    queried = [i for i in range(n_img) if i2t[i]]
    img_ranks = _brute_force_ranks(img[queried], txt, [i2t[i] for i in queried])
    txt_ranks = _brute_force_ranks(txt, img, [{i} for i in t2i])
    expected = {}
    for name, ranks in (("img2txt", img_ranks), ("txt2img", txt_ranks)):
        for k in (1, 5, 10):
            expected[f"{name}_r@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        expected[f"{name}_mean_rank"] = sum(ranks) / len(ranks)
        expected[f"{name}_median_rank"] = float(np.median(ranks))
    assert len(set(img_ranks)) > 3  # a non-trivial case
    got = evals.retrieval_metrics(img, txt, t2i, chunk_size=chunk_size)
    assert got == pytest.approx(expected, rel=1e-12)


def test_chunked_ranks_equal_unchunked():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(50, 8)).astype(np.float32)
    cands = rng.normal(size=(30, 8)).astype(np.float32)
    indptr, indices = common.csr_from_groups(
        [rng.choice(30, size=rng.integers(1, 4), replace=False) for _ in range(50)]
    )
    full = common.rank_of_positives(queries, cands, indptr, indices, chunk_size=50)
    for chunk in (1, 7, 16, 49, 64, None):
        np.testing.assert_array_equal(
            common.rank_of_positives(queries, cands, indptr, indices, chunk_size=chunk), full
        )


def test_100k_by_100k_retrieval_scores_in_bounded_blocks(monkeypatch):
    """No step builds the 100k x 100k score matrix: the block kernel (its arithmetic is
    tested above) is replaced by a recorder of the blocks it is asked to score."""
    blocks = []

    def recording_kernel(queries, candidates, positives):
        blocks.append((queries.shape[0], candidates.shape[0], positives.shape))
        return jnp.ones(queries.shape[0], jnp.int32)

    monkeypatch.setattr(common, "_chunk_ranks", recording_kernel)
    n = 100_000
    emb = np.zeros((n, 2), np.float32)
    m = evals.retrieval_metrics(emb, emb, np.arange(n))
    assert m["img2txt_r@1"] == m["txt2img_r@1"] == 1.0 and m["txt2img_mean_rank"] == 1.0
    assert max(q * k for q, k, _ in blocks) <= common.SCORE_BLOCK_ELEMENTS
    assert sum(q for q, _, _ in blocks) >= 2 * n  # every query of both directions scored
    assert {p for _, _, p in blocks} == {(blocks[0][0], 1)}


def test_retrieval_rejects_bad_input():
    emb = np.eye(3)
    with pytest.raises(ValueError, match="text_emb"):
        evals.retrieval_metrics(emb, np.eye(4), np.arange(4))
    with pytest.raises(ValueError, match="text_to_image"):
        evals.retrieval_metrics(emb, emb, np.arange(2))
    with pytest.raises(ValueError, match="text_to_image"):
        evals.retrieval_metrics(emb, emb, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="NaN"):
        evals.retrieval_metrics(np.full((3, 3), np.nan), emb, np.arange(3))
    with pytest.raises(ValueError, match="chunk_size"):
        evals.retrieval_metrics(emb, emb, np.arange(3), chunk_size=0)


def test_dedupe_texts_groups_identical_captions():
    tokens = np.array([[3, 1], [2, 0], [3, 1], [2, 0], [5, 5]])
    unique, groups = retrieval.dedupe_texts(tokens)
    found = {tuple(row): sorted(g.tolist()) for row, g in zip(unique, groups, strict=True)}
    assert found == {(3, 1): [0, 2], (2, 0): [1, 3], (5, 5): [4]}


# ------------------------------------------------------------------------ zero-shot


def test_zeroshot_known_top1_top5():
    # 7 classes with one-hot embeddings: image_emb rows are the class scores themselves.
    c = 7
    image_emb = np.array(
        [
            [9, 1, 1, 1, 1, 1, 1],  # label 0: rank 1
            [5, 4, 3, 2, 1, 0, 6],  # label 1: beaten by 6, 5 -> rank 3
            [0, 1, 2, 3, 4, 5, 6],  # label 0: last -> rank 7
            [1, 1, 1, 1, 1, 2, 2],  # label 5: tie with class 6 -> rank 2
            [6, 5, 4, 3, 2, 1, 0],  # label 5: rank 6
        ],
        dtype=np.float64,
    )
    labels = np.array([0, 1, 0, 5, 5])
    m = evals.zeroshot_metrics(image_emb, np.eye(c), labels)
    assert m == {"zeroshot_top1": 0.2, "zeroshot_top5": 0.6}
    for chunk in (1, 2):
        assert evals.zeroshot_metrics(image_emb, np.eye(c), labels, chunk_size=chunk) == m


def test_zeroshot_fewer_classes_than_k_is_perfect_top_k():
    rng = np.random.default_rng(0)
    m = evals.zeroshot_metrics(rng.normal(size=(6, 3)), np.eye(3), rng.integers(0, 3, 6))
    assert m["zeroshot_top5"] == 1.0


def test_zeroshot_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        evals.zeroshot_metrics(np.eye(3), np.eye(3), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="labels"):
        evals.zeroshot_metrics(np.eye(3), np.eye(3), np.array([0, 1]))


class PromptTokenizer:
    """Each known string -> a one-token row holding its index in ``vocab``."""

    def __init__(self, vocab):
        self.vocab = list(vocab)

    def encode(self, texts):
        return np.array([[self.vocab.index(t)] for t in texts], np.int32)


def test_prompt_ensembling_averages_and_renormalises():
    classnames, templates = ["cat", "dog"], ["a {}", "the {}", "{}!"]
    prompts = [t.replace("{}", c) for c in classnames for t in templates]
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(prompts), 4)).astype(np.float32)
    seen = []

    def embed_texts(tokens):
        seen.append(tokens.shape)
        return table[tokens[:, 0]]

    got = evals.class_embeddings(
        embed_texts, PromptTokenizer(prompts), classnames, templates, batch_size=4
    )
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)  # CLIP: each prompt's first
    expected = np.stack([unit[0:3].mean(0), unit[3:6].mean(0)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert seen == [(4, 1), (4, 1)]  # the partial last batch is padded to batch_size


def test_prompt_ensembling_rejects_bad_templates():
    with pytest.raises(ValueError, match="templates"):
        evals.class_embeddings(lambda t: t, PromptTokenizer(["x"]), ["x"], ["no slot"], 4)


# ----------------------------------------------------------------------- evaluators


@pytest.fixture
def fake_data(monkeypatch):
    return install_fake_data(monkeypatch)


def test_zeroshot_evaluator_with_oracle_and_wrong_model(fake_data):
    ev = build("zeroshot", batch_size=4, every_steps=5)
    assert ev.every_steps == 5
    assert fake_data["source"] == [("fake:test", 2, 0, ("image",))]
    assert ev.run({"image": oracle_images, "text": oracle_texts}) == {
        "eval/ev/zeroshot_top1": 1.0,
        "eval/ev/zeroshot_top5": 1.0,
    }

    def shifted_images(images):  # predicts label + 1: top-1 always wrong, 4 classes < 5
        return np.roll(oracle_images(images), 1, axis=1)

    m = ev.run({"image": shifted_images, "text": oracle_texts})
    assert m == {"eval/ev/zeroshot_top1": 0.0, "eval/ev/zeroshot_top5": 1.0}
    assert fake_data["batches"] == [(4, ("image",), None)]  # cached after the first run


def test_zeroshot_evaluator_classnames_from_file_and_list(fake_data, tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(CLASSES) + "\n\n")
    ev = build("zeroshot", classnames=str(path), templates=["{}"], max_examples=8)
    assert ev.classnames == CLASSES and ev.templates == ["{}"]
    assert ev.run({"image": oracle_images, "text": oracle_texts})["eval/ev/zeroshot_top1"] == 1.0
    assert fake_data["batches"][0][2] == 8
    # Class order matters: reversed names make every image wrong.
    rev = build("zeroshot", classnames=CLASSES[::-1])
    assert rev.run({"image": oracle_images, "text": oracle_texts})["eval/ev/zeroshot_top1"] == 0.0


def test_retrieval_evaluator_merges_duplicate_captions(fake_data):
    ev = build("retrieval", batch_size=4)
    m = ev.run({"image": oracle_images, "text": oracle_texts})
    assert set(m) == {
        f"eval/ev/{d}_{s}"
        for d in ("img2txt", "txt2img")
        for s in ("r@1", "r@5", "r@10", "mean_rank", "median_rank")
    }
    # 11 scenes share 4 captions; merged, each caption is correct for all its scenes.
    assert all(m[f"eval/ev/{d}_r@1"] == 1.0 for d in ("img2txt", "txt2img"))
    assert m["eval/ev/txt2img_mean_rank"] == 1.0

    def blind_texts(tokens):  # every text the same vector: all queries tie, ranked last
        return np.ones((len(tokens), len(CLASSES)), np.float32) / 2

    blind = ev.run({"image": oracle_images, "text": blind_texts})
    assert blind["eval/ev/img2txt_r@1"] == 0.0 and blind["eval/ev/img2txt_mean_rank"] == 4.0


def test_retrieval_same_if_counts_every_example_of_the_same_caption(fake_data):
    """same_if="text": every candidate whose example has the query's caption is correct
    (11 scenes, 4 captions), in both directions; a model off by one class gets none."""
    ev = build("retrieval", batch_size=4, same_if="text")
    assert ev.modalities == ["image", "text"]
    m = ev.run({"image": oracle_images, "text": oracle_texts})
    assert m["eval/ev/img2txt_r@1"] == 1.0 and m["eval/ev/txt2img_r@1"] == 1.0

    def shifted_images(images):
        return np.roll(oracle_images(images), 1, axis=1)

    m = ev.run({"image": shifted_images, "text": oracle_texts})
    assert m["eval/ev/img2txt_r@1"] == 0.0 and m["eval/ev/txt2img_r@1"] == 0.0
    with pytest.raises(ValueError, match=r"evals\.ev: modality 'depth' has no tower"):
        build("retrieval", same_if="depth")


def test_eval_batches_not_cached_when_too_big(fake_data, monkeypatch):
    monkeypatch.setattr(common, "CACHE_MAX_BYTES", 100)
    ev = build("retrieval", batch_size=4)
    first = ev.run({"image": oracle_images, "text": oracle_texts})
    assert ev.run({"image": oracle_images, "text": oracle_texts}) == first
    assert len(fake_data["batches"]) == 2


@pytest.mark.parametrize(
    "type_name, cfg, match",
    [
        ("zeroshot", {"classnmes": None}, r"evals\.ev\.classnmes: unknown key; valid keys are"),
        ("retrieval", {"templates": ["{}"]}, r"evals\.ev\.templates: unknown key"),
        ("retrieval", {"data": None}, r"evals\.ev\.data: required"),
        ("retrieval", {"batch_size": 0}, r"evals\.ev\.batch_size"),
        ("zeroshot", {"max_examples": 2.5}, r"evals\.ev\.max_examples"),
        ("zeroshot", {"templates": ["no slot"]}, r"evals\.ev\.templates"),
        ("zeroshot", {"classnames": "/nonexistent/names.txt"}, r"evals\.ev\.classnames"),
    ],
)
def test_bad_config_raises_naming_the_key(fake_data, type_name, cfg, match):
    with pytest.raises(ValueError, match=match):
        build(type_name, **cfg)


def test_zeroshot_needs_classnames_when_source_has_none(fake_data, monkeypatch):
    monkeypatch.setattr(FakeSource, "classnames", None)
    with pytest.raises(ValueError, match=r"evals\.ev\.classnames: the source has no class names"):
        build("zeroshot")


def test_registry_and_default_configs():
    with pytest.raises(ValueError, match=r"unknown evaluator type 'knn9'.*'retrieval', 'zeroshot'"):
        evals.get_evaluator("knn9")
    zs = evals.get_evaluator("zeroshot").default_config()
    rt = evals.get_evaluator("retrieval").default_config()
    common_keys = {"type", "data", "every_steps", "max_examples", "batch_size", "label_key", "dims"}
    pair_keys = common_keys | {"query", "candidates"}
    zs_keys = {"classnames", "templates", "benchmark", "prompts"}
    rt_keys = {"same_if", "benchmark", "candidates_field", "multi_caption"}
    assert set(zs) == pair_keys | zs_keys and zs.type == "zeroshot"
    assert set(rt) == pair_keys | rt_keys and rt.type == "retrieval"
    assert (rt.query, rt.candidates) == ("image", "text")
    with pytest.raises(ValueError, match=r"evals\.ev\.type: expected 'retrieval'"):
        evals.RetrievalEvaluator(
            "ev", {"type": "zeroshot", "data": "x"}, processors={}, image_size=2, seed=0
        )


def test_rank_of_positives_rejects_duplicate_or_missing_positives():
    emb = np.eye(3)
    with pytest.raises(ValueError, match="query 1 lists a candidate twice"):
        common.rank_of_positives(emb, emb, [0, 1, 3, 4], [0, 2, 2, 1])
    with pytest.raises(ValueError, match="query 1 has no correct candidate"):
        common.rank_of_positives(emb, emb, [0, 1, 1, 2], [0, 1])


def test_zeroshot_on_generated_shapes_with_oracle_model():
    """The real data path: source classnames/templates, eval batches and tokenizer."""
    pytest.importorskip("multimodal_ssl.data.sources")
    pipeline = pytest.importorskip("multimodal_ssl.data.pipeline")
    tokenizers = pytest.importorskip("multimodal_ssl.data.tokenizers")
    tokenizer = tokenizers.get_tokenizer("bytes", 48)
    cfg = evals.ZeroShotEvaluator.default_config()
    cfg.update({"data": "generated:shapes:test", "max_examples": 40, "batch_size": 16})
    processors = pipeline.image_text_processors(tokenizer, 16)
    ev = evals.ZeroShotEvaluator("shapes", cfg, processors=processors, image_size=16, seed=0)
    num_classes = len(ev.classnames)
    assert num_classes > 5 and ev.templates
    # The oracle knows each test image's label, and reads the class off a prompt.
    label_of_image = {
        image.tobytes(): int(label)
        for batch in ev.data.batches()
        for image, label in zip(batch["image"], batch["label"], strict=True)
    }
    class_of_prompt = {
        tokenizer.encode([t.replace("{}", name)])[0].tobytes(): c
        for c, name in enumerate(ev.classnames)
        for t in ev.templates
    }
    onehot = np.eye(num_classes, dtype=np.float32)

    def embed_images(images, shift=0):
        labels = [label_of_image[np.asarray(im).tobytes()] for im in images]
        return onehot[(np.array(labels) + shift) % num_classes]

    def embed_texts(tokens):  # rows that are no prompt (batch padding) get class 0
        return onehot[[class_of_prompt.get(row.tobytes(), 0) for row in np.asarray(tokens)]]

    m = ev.run({"image": embed_images, "text": embed_texts})
    assert m == {"eval/shapes/zeroshot_top1": 1.0, "eval/shapes/zeroshot_top5": 1.0}
    wrong = ev.run({"image": lambda im: embed_images(im, shift=1), "text": embed_texts})
    assert wrong["eval/shapes/zeroshot_top1"] == 0.0
