"""Zero-shot classification: class names x prompt templates -> averaged text embeddings
(CLIP-style prompt ensembling) -> top-k accuracy of the images' nearest classes.

On a standard benchmark (:mod:`.benchmarks`: ImageNet and its variants, CIFAR, Food-101,
Oxford Pets) the class names and templates of the papers are used by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from multimodal_ssl.evals import benchmarks, common

DEFAULT_TEMPLATES = ("{}",)  # the bare class name, when neither config nor source has any


def zeroshot_metrics(
    image_emb: np.ndarray,
    class_emb: np.ndarray,
    labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-k accuracy of classifying each image as its highest-scoring classes.

    Args:
      image_emb: [N, d] float; class_emb: [C, d] float (scores are dot products).
      labels: [N] int in [0, C).
      ks: the k of top-k; with C <= k every image is correct (top-k accuracy 1.0).
      chunk_size: image rows scored at once (None: automatic).
    Returns:
      {f"zeroshot_top{k}": accuracy in [0, 1]}. A tie between the true class and another
      counts against the image (rank = 1 + #other classes scoring >= the true class).
    """
    image_emb = common.check_embeddings("image_emb", image_emb)
    class_emb = common.check_embeddings("class_emb", class_emb, dim=image_emb.shape[1])
    labels = np.asarray(labels)
    if labels.shape != (len(image_emb),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected int [{len(image_emb)}], got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_emb)):
        raise ValueError(
            f"labels: must lie in [0, {len(class_emb)}) (one per class embedding), "
            f"got {labels.min()}..{labels.max()}"
        )
    ranks = common.rank_of_positives(
        image_emb, class_emb, np.arange(len(labels) + 1), labels, chunk_size=chunk_size
    )
    return common.rank_summary(ranks, ks, "zeroshot", recall="top", rank_stats=False)


def class_embeddings(
    embed_texts: common.EmbedFn,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
) -> np.ndarray:
    """Prompt-ensembled class embeddings: [C, d] f32, L2-normalised.

    Every template (a string with one "{}") is filled with every class name, tokenised
    (``tokenizer.encode(list[str]) -> i32 [n, L]``) and embedded; each class's T
    embeddings are L2-normalised, averaged and the mean re-normalised (CLIP's ensemble).
    """
    if not classnames:
        raise ValueError("classnames: empty")
    _check_templates("templates", templates)
    prompts = [t.replace("{}", name) for name in classnames for t in templates]
    tokens = np.asarray(tokenizer.encode(prompts))
    emb = common.embed_in_batches(embed_texts, tokens, batch_size)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = classnames[int(np.flatnonzero(norms[:, 0] == 0)[0])]
        raise ValueError(f"classnames: the prompt embeddings of {bad!r} average to zero")
    return mean / norms


def _check_templates(key: str, templates: Any) -> None:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"{key}: expected a non-empty list of str, got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"{key}: each must be a str with exactly one '{{}}', got {t!r}")


def subset_labels(labels: np.ndarray, subset: Sequence[int], key: str) -> np.ndarray:
    """labels [N] in the full label space -> their positions in ``subset`` (the classes
    evaluated, e.g. ImageNet-A's 200 of ImageNet's 1000); ValueError naming ``key`` for a
    label outside it."""
    position = np.full(max(subset) + 1, -1, np.int64)
    position[np.asarray(subset)] = np.arange(len(subset))
    labels = np.asarray(labels)
    inside = (labels >= 0) & (labels < len(position))
    out = np.where(inside, position[np.clip(labels, 0, len(position) - 1)], -1)
    if np.any(out < 0):
        bad = int(labels[np.flatnonzero(out < 0)[0]])
        raise ValueError(f"{key}: label {bad} is not among the benchmark's {len(subset)} classes")
    return out


def _read_classnames(
    name: str, value: Any, source, bench: benchmarks.Benchmark | None = None, prompts: str = "clip"
) -> list[str]:
    key = f"evals.{name}.classnames"
    if value is None and bench is not None:
        return bench.classnames(prompts, getattr(source, "classnames", None))
    if value is None:
        names = getattr(source, "classnames", None)
        if not names:
            raise ValueError(f"{key}: the source has no class names; give a list or a file path")
        return list(names)
    if isinstance(value, str):
        try:
            with open(value) as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ValueError(f"{key}: cannot read class-name file {value!r}: {e}") from e
        if not names:
            raise ValueError(f"{key}: file {value!r} has no class names")
        return names
    if isinstance(value, Sequence) and value and all(isinstance(n, str) for n in value):
        return list(value)
    raise ValueError(f"{key}: expected None, a file path or a non-empty list of str, got {value!r}")


class ZeroShotEvaluator(common.PairEvaluator):
    """Zero-shot classification of the ``query`` modality (default image) of ``data`` by
    its ``label``, against prompts embedded by the ``candidates`` text modality.

    Config keys: see ``default_config``; ``classnames``: None (the benchmark's, else the
    source's), a path to a text file (one name per line, in label order) or a list;
    ``templates``: None (the benchmark's, else the source's, else ``DEFAULT_TEMPLATES``)
    or a list of strings with one "{}"; ``benchmark``: None (found from the TFDS name of
    ``data``), a name of ``benchmarks.BENCHMARKS`` or "none"; ``prompts``: the
    benchmark's protocol, "clip" or "siglip" (see :mod:`.benchmarks`). A benchmark with
    a class subset (ImageNet-A/-R) classifies among its classes only.
    Metrics: ``eval/<name>/zeroshot_top1``, ``eval/<name>/zeroshot_top5``.
    """

    TYPE = "zeroshot"
    KS = (1, 5)

    @property
    def modalities(self) -> list[str]:
        return [self.config["query"]]  # the prompts are not read from the data

    def setup(self) -> None:
        text = self.processors[self.config["candidates"]]
        if getattr(text, "kind", None) != "text":
            raise ValueError(
                f"config.evals.{self.name}.candidates: {self.config['candidates']!r} is not a "
                "text modality (zero-shot embeds class-name prompts with it)"
            )
        self.tokenizer = text.tokenizer
        source = self.data.source
        self.benchmark = benchmarks.find(
            self.config["benchmark"], self.config["data"], self.TYPE, f"evals.{self.name}.benchmark"
        )
        prompts = self.config["prompts"]
        self.classnames = _read_classnames(
            self.name, self.config["classnames"], source, self.benchmark, prompts
        )
        self.subset = self.benchmark.subset_indices() if self.benchmark else None
        templates = self.config["templates"]
        if templates is None and self.benchmark is not None:
            templates = self.benchmark.prompt_templates(prompts)
        if templates is None:
            templates = getattr(source, "templates", None) or DEFAULT_TEMPLATES
        _check_templates(f"evals.{self.name}.templates", templates)
        self.templates = list(templates)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.classnames = None  # None = the source's; or a file path; or a list of names
        cfg.templates = None  # None = the source's; or a list of strings with one "{}"
        # None = the benchmark reading data's TFDS dataset, if any; a name; or "none".
        cfg.benchmark = ml_collections.config_dict.placeholder(str)
        cfg.prompts = "clip"  # the benchmark's class names and templates: "clip" or "siglip"
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        if cfg["templates"] is not None:
            _check_templates(f"evals.{name}.templates", cfg["templates"])
        benchmarks.check_prompts(cfg["prompts"], f"evals.{name}.prompts")
        benchmarks.find(cfg["benchmark"], cfg["data"], cls.TYPE, f"evals.{name}.benchmark")

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        query, candidates = self.config["query"], self.config["candidates"]
        class_emb = class_embeddings(
            embed[candidates], self.tokenizer, self.classnames, self.templates, self.batch_size
        )
        emb, kept = common.embed_pass(self.data.batches(), query, embed[query], ("label",))
        labels = kept["label"]
        if self.subset is not None:
            labels = subset_labels(labels, self.subset, f"evals.{self.name}.data")
        return self._prefixed(zeroshot_metrics(emb, class_emb, labels, ks=self.KS))
