"""Zero-shot and retrieval from several query modalities at once, and with each one
missing in turn (an example whose audio, say, is absent at test time).

An example's query is its embeddings ``q_1..q_k`` of the ``queries`` modalities (e.g.
image, audio, depth); the candidates are texts (``candidates``): the captions of the
examples for retrieval, the prompt-ensembled class names for zero-shot. The query set
``S`` is every query modality, then each set with one of them dropped (with two query
modalities: the pair, then each alone). A text ``t`` is scored against the query's
embeddings ``{q_m : m in S}`` by each rule of ``scores``:

* ``sum``: ``sum_{m in S} q_m . t``, late fusion of the pairwise cosine scores (what a
  model trained on modality pairs offers; with one modality: its cosine);
* ``mip``: ``sum_d t_d prod_{m in S} q_m[d]``, the multilinear inner product Symile
  trains (with all modalities; with one dropped it is a lower-order product it was not
  trained on; with one modality: the cosine);
* ``volume``: ``-sqrt(det G)`` with ``G`` the Gram matrix of ``t`` and ``{q_m}``: minus
  the volume GRAM trains (small = aligned; with one modality ``-sqrt(1 - cos^2)``, blind
  to the sign of the cosine, as GRAM's score is).

Retrieval counts a candidate correct when it has the query's caption (identical
candidate inputs), in both directions, as ``retrieval`` with ``same_if`` the
candidates; ranks follow ``common``'s pessimistic tie rule. Metrics, with ``S`` written
as its modalities' metric names joined by ``+`` (``img+audio``):
``eval/<name>/<rule>/<S>2txt_r@{1,5,10}``, ``.../txt2<S>_r@{1,5,10}`` and
``.../<S>_zeroshot_top{1,5}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from multimodal_ssl.evals import common
from multimodal_ssl.evals.zeroshot import DEFAULT_TEMPLATES, _read_classnames, class_embeddings

SCORES = ("sum", "mip", "volume")
# Query rows whose Gram determinants are formed at once ([rows, C, k+1, k+1] f64).
VOLUME_ROWS = 64


def query_sets(queries: Sequence[str]) -> list[tuple[str, ...]]:
    """Every query modality, then each set with one dropped (in ``queries`` order)."""
    queries = tuple(queries)
    if len(queries) < 2:
        return [queries]
    return [queries, *(tuple(m for m in queries if m != drop) for drop in queries)]


def fused_scores(queries: Sequence[np.ndarray], candidates: np.ndarray, rule: str) -> np.ndarray:
    """``queries``: k arrays ``[N, d]`` (row i of each: example i), ``candidates`` ``[C, d]``
    -> scores ``[N, C]`` f64 by ``rule`` (module docstring); higher = better match."""
    if rule not in SCORES:
        raise ValueError(f"score rule {rule!r} is not one of {list(SCORES)}")
    qs = [np.asarray(q, np.float64) for q in queries]
    cand = np.asarray(candidates, np.float64)
    if rule == "sum":
        return np.sum(qs, axis=0) @ cand.T
    if rule == "mip":
        return np.prod(qs, axis=0) @ cand.T
    k = len(qs)
    stacked = np.stack(qs, axis=1)  # [N, k, d]
    out = np.empty((len(stacked), len(cand)))
    for start in range(0, len(stacked), VOLUME_ROWS):
        a = stacked[start : start + VOLUME_ROWS]  # [n, k, d]
        n = len(a)
        gram = np.empty((n, len(cand), k + 1, k + 1))
        gram[:, :, 0, 0] = np.sum(cand * cand, axis=1)[None, :]
        cross = np.einsum("nkd,cd->nck", a, cand)  # q_m . t
        gram[:, :, 0, 1:] = cross
        gram[:, :, 1:, 0] = cross
        gram[:, :, 1:, 1:] = np.einsum("nkd,njd->nkj", a, a)[:, None]
        det = np.linalg.det(gram)
        out[start : start + n] = -np.sqrt(np.maximum(det, 0.0))
    return out


def ranks_from_scores(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """``scores`` ``[Q, C]``, ``positives`` bool ``[Q, C]`` (>= 1 per row) -> the rank of
    each row's best positive: 1 + the wrong candidates scoring >= it (ties count against
    the query, as ``common.rank_of_positives``)."""
    scores = np.asarray(scores)
    positives = np.asarray(positives, bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ")
    if len(scores) and not positives.any(axis=1).all():
        raise ValueError(f"query {int(np.argmin(positives.any(axis=1)))} has no positive")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores: contains NaN or inf")
    best = np.max(np.where(positives, scores, -np.inf), axis=1, keepdims=True)
    return 1 + np.sum((scores >= best) & ~positives, axis=1)


def fused_metrics(
    queries: Mapping[str, np.ndarray],
    texts: np.ndarray,
    groups: np.ndarray,
    class_emb: np.ndarray,
    labels: np.ndarray,
    *,
    rules: Sequence[str] = SCORES,
    text_name: str = "txt",
) -> dict[str, float]:
    """The metrics of the module docstring (without the ``eval/<name>/`` head).

    queries: ``{modality: [N, d]}`` in query order; texts: ``[N, d]``, example i's caption;
    groups: ``[N]`` int, equal for examples with the same caption; class_emb: ``[K, d]``;
    labels: ``[N]`` int in ``[0, K)``; text_name: how the candidates are written."""
    groups = np.asarray(groups)
    same = groups[:, None] == groups[None, :]  # [N, N] query i x text j
    out = {}
    for rule in rules:
        for subset in query_sets(list(queries)):
            tag = "+".join(common.metric_name(m) for m in subset)
            embs = [queries[m] for m in subset]
            scores = fused_scores(embs, texts, rule)
            txt = text_name
            for prefix, ranks in (
                (f"{rule}/{tag}2{txt}", ranks_from_scores(scores, same)),
                (f"{rule}/{txt}2{tag}", ranks_from_scores(scores.T, same.T)),
            ):
                out.update(common.rank_summary(ranks, (1, 5, 10), prefix, rank_stats=False))
            zs = fused_scores(embs, class_emb, rule)
            onehot = np.arange(len(class_emb))[None, :] == np.asarray(labels)[:, None]
            ranks = ranks_from_scores(zs, onehot)
            out.update(
                common.rank_summary(
                    ranks, (1, 5), f"{rule}/{tag}_zeroshot", recall="top", rank_stats=False
                )
            )
    return out


class FusedEvaluator(common.Evaluator):
    """Zero-shot and retrieval from the combined ``queries`` modalities and from each
    subset missing one of them (module docstring).

    Keys: ``queries`` (comma-separated modalities, e.g. ``"image,audio,depth"``),
    ``candidates`` (a text modality, default ``text``), ``scores`` (comma-separated rules
    of ``SCORES``); zero-shot classes and templates: the source's (``classnames`` /
    ``templates`` to override, as ``zeroshot``); ``label_key`` as ``zeroshot``."""

    TYPE = "fused"
    MODALITY_KEYS = ("candidates",)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        del cfg.query
        cfg.queries = "image,audio"
        cfg.candidates = "text"
        cfg.scores = ",".join(SCORES)
        cfg.classnames = None
        cfg.templates = None
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        queries = cfg["queries"]
        if isinstance(queries, str):
            queries = tuple(m.strip() for m in queries.split(",") if m.strip())
        if not queries or not all(isinstance(m, str) and m for m in queries):
            raise ValueError(f"evals.{name}.queries: expected e.g. 'image,audio', got {queries!r}")
        if len(set(queries)) != len(queries) or cfg["candidates"] in queries:
            raise ValueError(
                f"evals.{name}.queries: {queries!r} must be distinct and not the candidates"
            )
        cfg["queries"] = tuple(queries)
        rules = cfg["scores"]
        if isinstance(rules, str):
            rules = tuple(r.strip() for r in rules.split(",") if r.strip())
        bad = [r for r in rules if r not in SCORES]
        if not rules or bad:
            raise ValueError(f"evals.{name}.scores: {cfg['scores']!r}; rules are {list(SCORES)}")
        cfg["scores"] = tuple(rules)

    @property
    def modalities(self) -> list[str]:
        return [*self.config["queries"], self.config["candidates"]]

    def setup(self) -> None:
        text = self.processors[self.config["candidates"]]
        if getattr(text, "kind", None) != "text":
            raise ValueError(
                f"config.evals.{self.name}.candidates: {self.config['candidates']!r} is not a "
                "text modality"
            )
        self.tokenizer = text.tokenizer
        source = self.data.source
        self.classnames = _read_classnames(self.name, self.config["classnames"], source)
        templates = self.config["templates"] or getattr(source, "templates", None)
        self.templates = list(templates or DEFAULT_TEMPLATES)

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        queries, c = self.config["queries"], self.config["candidates"]
        batches = list(self.data.batches())
        embs = {m: common.embed_pass(batches, m, embed[m])[0] for m in queries}
        texts, kept = common.embed_pass(batches, c, embed[c], (c, "label"))
        _, groups = np.unique(kept[c], axis=0, return_inverse=True)
        class_emb = class_embeddings(
            embed[c], self.tokenizer, self.classnames, self.templates, self.batch_size
        )
        metrics = fused_metrics(
            embs, texts, groups.reshape(-1), class_emb, kept["label"],
            rules=self.config["scores"], text_name=common.metric_name(c),
        )
        return self._prefixed(metrics)
