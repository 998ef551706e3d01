"""Shared machinery of the evaluators: ranking in query chunks, embedding a data pass,
config resolution, and the :class:`Evaluator` base class.

Ranking convention (used by every evaluator, stated once here): a query's score for a
candidate is the dot product of their embeddings (cosine similarity for the
L2-normalised embeddings the model returns). Its *rank* is
``1 + #(wrong candidates whose score >= the best correct candidate's score)`` — ties
count against the query (the pessimistic convention), so a model that maps everything
to one vector gets the worst rank, not the best. Recall@k / top-k accuracy is the
fraction of queries with ``rank <= k``; with fewer than ``k`` wrong candidates it is 1.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from multimodal_ssl.data import rows
from multimodal_ssl.evals.prefix import check_dims, run_at_prefixes

EmbedFn = Callable[[Any], Any]  # [b, ...] (or a dict, data/rows.py) -> [b, d] f32
EmbedFns = Mapping[str, EmbedFn]  # {modality: embed function}
# Short names of the image/text modalities in metric names (img2txt_r@1, ...).
_METRIC_NAMES = {"image": "img", "text": "txt"}


def metric_name(modality: str) -> str:
    """How ``modality`` appears in metric names: ``img``/``txt`` for image/text (the
    names every SigLIP/CLIP codebase reports), else the modality name."""
    return _METRIC_NAMES.get(modality, modality)


# Query chunks hold at most this many scores ([chunk, num_candidates] f32 = 64 MiB).
SCORE_BLOCK_ELEMENTS = 2**24
# An evaluator keeps its eval batches in memory after the first pass if they fit.
CACHE_MAX_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- ranking


def csr_from_groups(groups: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Row i's positives ``groups[i]`` -> (indptr [R+1] i64, indices [nnz] i64) with
    duplicates removed and each row's indices sorted."""
    rows = [np.unique(np.asarray(list(g), np.int64)) for g in groups]
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return indptr, indices


def transpose_csr(
    indptr: np.ndarray, indices: np.ndarray, num_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """The relation row->cols as col->rows: (indptr [num_cols+1], indices [nnz])."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((rows, indices))
    counts = np.bincount(indices, minlength=num_cols)
    t_indptr = np.zeros(num_cols + 1, np.int64)
    t_indptr[1:] = np.cumsum(counts)
    return t_indptr, rows[order].astype(np.int64)


@jax.jit
def _chunk_ranks(queries: jax.Array, candidates: jax.Array, positives: jax.Array) -> jax.Array:
    """queries [c, d] f32, candidates [K, d] f32, positives [c, P] i32 (-1 = padding,
    no duplicates) -> ranks [c] i32 under the pessimistic tie rule."""
    scores = jnp.matmul(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
    valid = positives >= 0
    pos_scores = jnp.take_along_axis(scores, jnp.maximum(positives, 0), axis=1)
    best = jnp.max(jnp.where(valid, pos_scores, -jnp.inf), axis=1, keepdims=True)
    # Every candidate scoring >= best, minus the correct ones among them (taken from the
    # same score matrix, so equal scores compare exactly).
    n_ge = jnp.sum(scores >= best, axis=1)
    n_pos_ge = jnp.sum(valid & (pos_scores >= best), axis=1)
    return 1 + n_ge - n_pos_ge


def rank_of_positives(
    queries: np.ndarray,
    candidates: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    *,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Rank of the best correct candidate for every query (module docstring's tie rule).

    Args:
      queries: [Q, d] float (cast to f32).
      candidates: [K, d] float (cast to f32).
      indptr, indices: CSR relation, query q's correct candidates are
        ``indices[indptr[q]:indptr[q+1]]``; every query needs at least one.
      chunk_size: query rows scored at once (None: as many as fit
        ``SCORE_BLOCK_ELEMENTS`` scores); only ``[chunk_size, K]`` scores ever exist.
    Returns:
      ranks: [Q] i64, 1 = the best correct candidate beats every wrong one.
    """
    queries = check_embeddings("queries", queries)
    candidates = check_embeddings("candidates", candidates, dim=queries.shape[1])
    num_q, num_k = len(queries), len(candidates)
    indptr, indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)
    if indptr.shape != (num_q + 1,):
        raise ValueError(f"indptr: expected shape ({num_q + 1},), got {indptr.shape}")
    counts = np.diff(indptr)
    if num_q and counts.min() < 1:
        raise ValueError(f"query {int(np.argmin(counts))} has no correct candidate")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_k):
        raise ValueError(f"indices: must lie in [0, {num_k}), got {indices.min()}..{indices.max()}")
    if num_q == 0:
        return np.zeros(0, np.int64)
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_ELEMENTS // max(num_k, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, num_q)

    # Positives as a [Q, P] table (-1 = padding). The last chunk is padded to chunk_size
    # rows so that all chunks share one compiled shape.
    rows = np.repeat(np.arange(num_q), counts)
    table = np.full((num_q, int(counts.max())), -1, np.int32)
    table[rows, np.arange(len(indices)) - indptr[rows]] = indices
    order = np.lexsort((indices, rows))
    sorted_rows, sorted_idx = rows[order], indices[order]
    dup = (sorted_rows[1:] == sorted_rows[:-1]) & (sorted_idx[1:] == sorted_idx[:-1])
    if np.any(dup):
        raise ValueError(f"indices: query {int(sorted_rows[1:][dup][0])} lists a candidate twice")
    cand = jnp.asarray(candidates)
    ranks = []
    for start in range(0, num_q, chunk_size):
        q, pos = queries[start : start + chunk_size], table[start : start + chunk_size]
        if len(q) < chunk_size:
            q = np.concatenate([q, np.zeros((chunk_size - len(q), q.shape[1]), q.dtype)])
            pos = np.concatenate(
                [pos, np.full((chunk_size - len(pos), pos.shape[1]), -1, pos.dtype)]
            )
        ranks.append(_chunk_ranks(jnp.asarray(q), cand, jnp.asarray(pos)))
    return np.concatenate([np.asarray(chunk) for chunk in ranks])[:num_q].astype(np.int64)


def rank_summary(
    ranks: np.ndarray,
    ks: Sequence[int],
    prefix: str,
    *,
    recall: str = "r@",
    rank_stats: bool = True,
) -> dict[str, float]:
    """ranks [Q] int (Q >= 1) -> {f"{prefix}_{recall}{k}": fraction of ranks <= k} and,
    with rank_stats, f"{prefix}_mean_rank" / f"{prefix}_median_rank"."""
    if len(ranks) == 0:
        raise ValueError(f"{prefix}: no queries to rank")
    for k in ks:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"ks: every k must be an int >= 1, got {k!r}")
    out = {f"{prefix}_{recall}{k}": float(np.mean(ranks <= k)) for k in ks}
    if rank_stats:
        out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
        out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def check_embeddings(name: str, x: Any, dim: int | None = None) -> np.ndarray:
    """``x`` as a finite [n, d] f32 numpy array (d == dim if given), else ValueError."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise ValueError(f"{name}: expected shape {want}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


# ------------------------------------------------------------------------- embedding


def embed_in_batches(embed_fn: EmbedFn, inputs: rows.Rows, batch_size: int) -> np.ndarray:
    """embed_fn over ``inputs`` [n, ...] (or a dict of them, :mod:`~.data.rows`) in
    chunks of ``batch_size`` -> [n, d] f32.

    When n > batch_size the last partial chunk is padded to batch_size (``rows.pad``) so
    a jitted embed_fn sees one shape per call site.
    """
    inputs = rows.as_numpy(inputs)
    n = rows.num_rows(inputs)
    size = min(batch_size, n)
    outs = []
    for start in range(0, n, max(size, 1)):
        chunk = rows.take(inputs, slice(start, start + size))
        num = rows.num_rows(chunk)
        out = np.asarray(embed_fn(rows.pad(chunk, size)), np.float32)
        if out.ndim != 2 or len(out) != size:
            raise ValueError(f"embedding of {size} inputs: expected [{size}, d], got {out.shape}")
        outs.append(out[:num])
    if not outs:
        raise ValueError("no inputs to embed")
    return np.concatenate(outs)


def embed_pass(
    batches: Iterable[Mapping[str, np.ndarray]],
    modality: str,
    embed_fn: EmbedFn,
    keep: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Embeds ``batch[modality]`` of every batch: -> (emb [N, d] f32, {key: [N, ...]}
    concatenating ``batch[key]`` for each key in ``keep``)."""
    embs, kept = [], {k: [] for k in keep}
    for batch in batches:
        inputs = rows.as_numpy(batch[modality])
        n = rows.num_rows(inputs)
        out = np.asarray(embed_fn(inputs), np.float32)
        if out.ndim != 2 or len(out) != n:
            raise ValueError(f"embed {modality}: expected [{n}, d], got {out.shape}")
        embs.append(out)
        for k in keep:
            kept[k].append(rows.as_numpy(batch[k]))
    if not embs:
        raise ValueError("the eval data is empty")
    return np.concatenate(embs), {k: rows.concat(v) for k, v in kept.items()}


# ------------------------------------------------------------------ data and config


def open_eval_source(spec: str, *, image_size: int, seed: int, source_kwargs: Any):
    """The source ``spec`` (split "test" unless the spec names one); ``source_kwargs``:
    DataOptions (with the field ``requests`` of the modalities to read) or a dict."""
    # Local import: the evaluator registry is used by config validation, which should
    # not pull in the input pipeline.
    from multimodal_ssl.data import sources

    return sources.get_source(
        spec, image_size=image_size, seed=seed, default_split="test", source_kwargs=source_kwargs
    )


def make_batches(source, *, batch_size: int, processors, max_examples: int | None, options=None):
    """One ordered pass over ``source`` as numpy batches with one entry per processor
    (see data.pipeline); ``options``: the data options (``strict``)."""
    from multimodal_ssl.data import pipeline

    return pipeline.make_eval_batches(
        source,
        batch_size=batch_size,
        processors=processors,
        max_examples=max_examples,
        options=options,
    )


def complete_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` without the rows that lack a modality (``mask/<m>`` False), and without
    the masks."""
    masks = [np.asarray(v, bool) for k, v in batch.items() if k.startswith("mask/")]
    out = {k: v for k, v in batch.items() if not k.startswith("mask/")}
    if not masks or all(m.all() for m in masks):
        return out
    keep = np.logical_and.reduce(masks)
    return {k: rows.take(v, keep) for k, v in out.items()}


class EvalData:
    """An eval split read in order, keeping only the examples that have every modality
    read (a mixture's source may lack one); after the first complete pass the batches
    stay in memory when they total at most ``CACHE_MAX_BYTES``."""

    def __init__(self, source, **batch_kwargs: Any):
        self.source = source
        self._batch_kwargs = batch_kwargs
        self._cache: list[dict[str, np.ndarray]] | None = None

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[dict[str, np.ndarray]] | None = []
        size = 0
        for batch in make_batches(self.source, **self._batch_kwargs):
            batch = complete_rows(batch)
            if not len(batch["id"]):
                continue
            if kept is not None:
                size += sum(rows.nbytes(v) for v in batch.values())
                if size <= CACHE_MAX_BYTES:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._cache = kept


def resolve_config(
    name: str, cfg: Mapping[str, Any], defaults: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``defaults`` overridden by ``cfg``; unknown keys or a wrong ``type`` raise
    ValueError naming ``evals.<name>.<key>`` (values: ``Evaluator.check_config``)."""
    valid = sorted(defaults.keys())
    for key in cfg.keys():
        if key not in defaults:
            raise ValueError(f"evals.{name}.{key}: unknown key; valid keys are {valid}")
    out = {**defaults.to_dict(), **{k: cfg[k] for k in cfg.keys()}}
    if out["type"] != defaults.type:
        raise ValueError(f"evals.{name}.type: expected {defaults.type!r}, got {out['type']!r}")
    return out


def check_int(key: str, value: Any, *, low: int = 1, allow_none: bool = False) -> None:
    """ValueError naming ``key`` unless ``value`` is an int >= low (or None if allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key}: must be an int >= {low}, got {value!r}")


def check_source_spec(key: str, value: Any) -> None:
    """ValueError naming ``key`` unless ``value`` is a non-empty source spec string."""
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{key}: required source spec (e.g. 'generated:shapes:test'), got {value!r}"
        )


class Evaluator(abc.ABC):
    """Base of every evaluator type.

    Built from ``config.evals.<name>`` (``builder.build_evaluators``); ``run`` is called
    every ``every_steps`` steps and at the end with ``{modality: embed_fn}``. Subclasses
    set ``TYPE`` and ``MODALITY_KEYS`` (the config keys naming the modalities they read
    from ``data``, default ``query``), add their own keys in ``default_config`` and
    implement ``run``.

    ``processors``: ``{modality: data.modalities.Processor}`` of the model's towers (the
    eval preprocessing); ``image_size`` and ``seed`` go to the sources.
    """

    TYPE: ClassVar[str]
    MODALITY_KEYS: ClassVar[tuple[str, ...]] = ("query",)

    def __init__(
        self,
        name: str,
        cfg: Mapping[str, Any],
        *,
        processors: Mapping[str, Any],
        image_size: int,
        seed: int,
        source_kwargs: Any = None,
    ):
        self.name = name
        self.config = self.resolve(name, cfg)
        self.every_steps: int = self.config["every_steps"]
        self.batch_size: int = self.config["batch_size"]
        self.seed = seed
        self.processors = dict(processors)
        for key in self.MODALITY_KEYS:
            modality = self.config[key]
            if modality not in self.processors:
                raise ValueError(
                    f"config.evals.{name}.{key}: modality {modality!r} has no tower "
                    f"(towers: {sorted(self.processors)})"
                )
        if self.config["label_key"] is not None:  # the eval's label column/feature
            from multimodal_ssl.data.sources import DataOptions

            source_kwargs = dataclasses.replace(
                DataOptions.coerce(source_kwargs), label_key=self.config["label_key"]
            )
        self._source_args = {"image_size": image_size, "seed": seed, "source_kwargs": source_kwargs}
        self.data = self.open_data(self.config["data"], self.config["max_examples"])
        self.setup()

    def setup(self) -> None:
        """Subclass hook, called at the end of ``__init__``: open further data, read
        class names, ... (``self.config``, ``self.data`` and ``open_data`` are ready)."""
        return None  # nothing to add by default

    @property
    def modalities(self) -> list[str]:
        """The modalities this evaluator reads from its data (``MODALITY_KEYS``' values)."""
        return [self.config[k] for k in self.MODALITY_KEYS]

    def open_data(self, spec: str, max_examples: int | None) -> EvalData:
        """An ordered pass over the first ``max_examples`` (None = all) of source ``spec``
        in batches of ``batch_size``, reading this evaluator's ``modalities``."""
        from multimodal_ssl.data.sources import DataOptions

        for m in self.modalities:
            if m not in self.processors:
                raise ValueError(
                    f"config.evals.{self.name}: modality {m!r} has no tower "
                    f"(towers: {sorted(self.processors)})"
                )
        processors = {m: self.processors[m] for m in self.modalities}
        kwargs = dict(self._source_args)
        kwargs["source_kwargs"] = dataclasses.replace(
            DataOptions.coerce(kwargs["source_kwargs"]),
            requests=tuple(p.request for p in processors.values()),
        )
        source = open_eval_source(spec, **kwargs)
        return EvalData(
            source,
            batch_size=self.batch_size,
            processors=processors,
            max_examples=max_examples,
            options=kwargs["source_kwargs"],
        )

    @classmethod
    def resolve(cls, name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """``evals.<name>`` with defaults filled in, checked by :func:`resolve_config` and
        :meth:`check_config`; the config validator calls this before anything is built."""
        out = resolve_config(name, cfg, cls.default_config())
        cls.check_config(name, out)
        return out

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        """Value checks of the resolved ``cfg``; ValueError names ``evals.<name>.<key>``.
        Subclasses with keys of their own extend this (calling ``super()``)."""
        check_source_spec(f"evals.{name}.data", cfg["data"])
        for key in cls.MODALITY_KEYS:
            if not isinstance(cfg[key], str) or not cfg[key]:
                raise ValueError(f"evals.{name}.{key}: expected a modality name, got {cfg[key]!r}")
        cfg["dims"] = check_dims(f"evals.{name}.dims", cfg["dims"])
        for key, allow_none in (
            ("every_steps", False),
            ("batch_size", False),
            ("max_examples", True),
        ):
            check_int(f"evals.{name}.{key}", cfg[key], allow_none=allow_none)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """Every key of ``evals.<name>`` for this type with its default; ``data`` has none."""
        return ml_collections.ConfigDict(
            {
                "type": cls.TYPE,
                "data": ml_collections.config_dict.placeholder(str),  # e.g. "generated:shapes:test"
                # The modality whose embeddings are evaluated (classified, used as queries).
                "query": "image",
                "every_steps": 1000,
                "max_examples": ml_collections.config_dict.placeholder(int),  # None = all
                "batch_size": 256,
                # Label column (csv) / feature (tfds) / member or json key (wds) of the
                # data; None = "label" where present.
                "label_key": ml_collections.config_dict.placeholder(str),
                # Also evaluate these embedding prefixes (Matryoshka; evals/prefix.py).
                "dims": ml_collections.config_dict.placeholder(tuple),
            }
        )

    def run(self, embed: EmbedFns) -> dict[str, float]:
        """-> {"eval/<name>/<metric>": value} (and ``eval/<name>/d<m>/<metric>`` for each
        ``m`` in ``dims``). embed: {modality: [b, ...] -> L2-normalised [b, d]} for (at
        least) this evaluator's modalities."""
        return run_at_prefixes(self.compute, embed, self.config["dims"], self.name)

    @abc.abstractmethod
    def compute(self, embed: EmbedFns) -> dict[str, float]:
        """The metrics of ``embed`` (as :meth:`run`, at the width ``embed`` gives)."""

    def _prefixed(self, metrics: Mapping[str, float]) -> dict[str, float]:
        return {f"eval/{self.name}/{k}": float(v) for k, v in metrics.items()}


class PairEvaluator(Evaluator):
    """An evaluator of two modalities: ``query`` (default image) and ``candidates``
    (default text)."""

    MODALITY_KEYS = ("query", "candidates")

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.candidates = "text"
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        if cfg["query"] == cfg["candidates"]:
            raise ValueError(f"evals.{name}.candidates: must differ from query ({cfg['query']!r})")
