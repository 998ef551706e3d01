"""Image<->text retrieval: recall@k and mean/median rank in both directions.

Scores are dot products of the embeddings, computed in query chunks so an N x M score
matrix never exists; ties count against the query (see ``common``'s module docstring).

Multi-caption benchmarks (COCO: ~5 captions per image, :mod:`.benchmarks`) read every
caption of an image: each caption is a text->image query, and an image is retrieved at
rank k when any of its captions is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from multimodal_ssl.data import rows
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.modalities import Processor
from multimodal_ssl.data.records import decode_caption
from multimodal_ssl.evals import benchmarks, common


def _text_to_image_csr(text_to_image, num_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """text_to_image ([M] int, or M int sequences) as a CSR relation text -> images."""
    if isinstance(text_to_image, np.ndarray) and text_to_image.ndim == 1:
        if not np.issubdtype(text_to_image.dtype, np.integer):
            raise ValueError(f"text_to_image: expected ints, got {text_to_image.dtype}")
        indptr, indices = np.arange(len(text_to_image) + 1), text_to_image.astype(np.int64)
    else:
        groups = [np.atleast_1d(np.asarray(g)) for g in text_to_image]
        for m, g in enumerate(groups):
            if g.size == 0 or not np.issubdtype(g.dtype, np.integer):
                raise ValueError(f"text_to_image[{m}]: expected >= 1 int image index, got {g!r}")
        indptr, indices = common.csr_from_groups(groups)
    if len(indptr) - 1 != num_texts:
        raise ValueError(
            f"text_to_image: expected one entry per text ({num_texts}), got {len(indptr) - 1}"
        )
    return indptr, indices


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray | Sequence[Sequence[int]],
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@k and mean/median rank for image->text and text->image retrieval.

    Args:
      image_emb: [N, d] float (L2-normalised for cosine scores).
      text_emb: [M, d] float.
      text_to_image: [M] int, the image each text describes (an image may have several
        texts); or a length-M sequence of int index lists for texts that describe
        several images (e.g. one caption string shared by several scenes).
      ks: the k of recall@k.
      chunk_size: query rows scored at once (None: automatic, see
        ``common.rank_of_positives``).
    Returns:
      {"img2txt_r@k", "txt2img_r@k" for k in ks, "img2txt_mean_rank",
      "img2txt_median_rank", "txt2img_mean_rank", "txt2img_median_rank"}.
      A query's rank is 1 + the number of wrong candidates scoring >= its best correct
      candidate (ties count against the query). Images with no text are not
      image->text queries, but remain (wrong) candidates for text->image.
    """
    image_emb = common.check_embeddings("image_emb", image_emb)
    text_emb = common.check_embeddings("text_emb", text_emb, dim=image_emb.shape[1])
    t2i_indptr, t2i_indices = _text_to_image_csr(text_to_image, len(text_emb))
    if len(t2i_indices) and (t2i_indices.min() < 0 or t2i_indices.max() >= len(image_emb)):
        raise ValueError(
            f"text_to_image: image indices must lie in [0, {len(image_emb)}), "
            f"got {t2i_indices.min()}..{t2i_indices.max()}"
        )
    i2t_indptr, i2t_indices = common.transpose_csr(t2i_indptr, t2i_indices, len(image_emb))
    has_text = np.diff(i2t_indptr) > 0
    queried = np.flatnonzero(has_text)
    i2t_indptr = np.concatenate([[0], np.cumsum(np.diff(i2t_indptr)[queried])])

    txt2img = common.rank_of_positives(
        text_emb, image_emb, t2i_indptr, t2i_indices, chunk_size=chunk_size
    )
    img2txt = common.rank_of_positives(
        image_emb[queried], text_emb, i2t_indptr, i2t_indices, chunk_size=chunk_size
    )
    return {
        **common.rank_summary(img2txt, ks, "img2txt"),
        **common.rank_summary(txt2img, ks, "txt2img"),
    }


def dedupe_texts(tokens: rows.Rows) -> tuple[rows.Rows, list[np.ndarray]]:
    """tokens [N, L] int, row i the caption of image i -> (unique rows [M, L],
    the images of each unique row: M int arrays). Identical token rows are one text
    belonging to all their images, so a perfect model is not penalised by the exact
    ties between copies of one caption. Dict rows (NaFlex image candidates,
    :mod:`~multimodal_ssl.data.rows`) are compared by their bytes."""
    if isinstance(tokens, dict):
        keys = rows.row_keys(tokens)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        unique = rows.take(tokens, first)
    else:
        unique, inverse = np.unique(tokens, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
    return unique, np.split(order, splits)


class CaptionListProcessor(Processor):
    """Reads every caption of an example (a sequence field, or one caption) and tokenises
    them: i32 [b, K, L] with K the most captions of an example in the batch; the rows
    past an example's own captions are -1."""

    kind = "text"

    def __init__(self, text: Any, field: str | None):
        super().__init__(text.modality, field or text.name)
        self.tokenizer = text.tokenizer

    @property
    def request(self) -> FieldRequest:
        return FieldRequest(self.modality, self.name, binary=False, sequence=True)

    def read(self, value, where, rng):
        values = value if isinstance(value, list | tuple | np.ndarray) else [value]
        return tuple(decode_caption(v, where) for v in values)

    def absent(self) -> tuple:
        return ()

    def collate(self, values):
        length = self.tokenizer.max_len
        out = np.full((len(values), max(1, *map(len, values)), length), -1, np.int32)
        for i, captions in enumerate(values):
            if captions:
                out[i, : len(captions)] = self.tokenizer.encode(list(captions))
        return out

    def example_shape(self):
        return (self.tokenizer.max_len,), np.dtype(np.int32)


def flatten_captions(tokens: np.ndarray, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens [b, K, L] (-1 rows: no caption) -> (captions [M, L], image of each [M]:
    its row + ``offset``), captions in row-major order."""
    rows, slots = np.nonzero(tokens[..., 0] >= 0)
    return tokens[rows, slots], rows + offset


class RetrievalEvaluator(common.PairEvaluator):
    """Retrieval between the ``query`` and ``candidates`` modalities (default image and
    text) of the examples of ``data``, in both directions.

    Config keys: see ``default_config``. Identical candidate inputs (e.g. the same
    caption) are merged into one candidate that belongs to all their queries (see
    ``dedupe_texts``). ``same_if`` (a modality, default None): a candidate is correct for
    every query whose example has the identical ``same_if`` input (e.g. ``"text"``: any
    clip of a scene with the same caption is a correct match for an image), instead of
    only its own example's. ``multi_caption`` (None: the benchmark's): every caption of
    an example's caption list (``candidates_field``, e.g. ``captions/text``; None: the
    benchmark's, else ``data.fields``) is a candidate, and none are merged. ``benchmark``:
    as for zero-shot (found from ``data``'s TFDS name: ``coco_captions`` -> ``coco``).
    Examples lacking either modality are left out. Metrics:
    ``eval/<name>/{q}2{c}_r@{1,5,10}``, ``{c}2{q}_...`` and ``..._{mean,median}_rank``,
    with ``img``/``txt`` for image/text (``img2txt_r@1``, ``audio2txt_r@1``, ...).
    """

    TYPE = "retrieval"
    KS = (1, 5, 10)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.same_if = ml_collections.config_dict.placeholder(str)  # e.g. "text"
        cfg.benchmark = ml_collections.config_dict.placeholder(str)  # None: from data
        cfg.candidates_field = ml_collections.config_dict.placeholder(str)  # "captions/text"
        cfg.multi_caption = ml_collections.config_dict.placeholder(bool)
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        bench = benchmarks.find(cfg["benchmark"], cfg["data"], cls.TYPE, f"evals.{name}.benchmark")
        multi = cfg["multi_caption"]
        if cfg["same_if"] and (multi or (multi is None and bench and bench.captions)):
            raise ValueError(f"evals.{name}.same_if: not with a multi-caption benchmark")

    def __init__(self, name: str, cfg: Mapping[str, Any], *, processors, **kwargs):
        config = self.resolve(name, cfg)
        self.benchmark = benchmarks.find(
            config["benchmark"], config["data"], self.TYPE, f"evals.{name}.benchmark"
        )
        field = config["candidates_field"] or (self.benchmark and self.benchmark.captions)
        multi = config["multi_caption"]
        if multi is None:
            multi = bool(self.benchmark and self.benchmark.captions)
        self.multi_caption = multi
        processors = dict(processors)
        c = config["candidates"]
        if c in processors and (self.multi_caption or field):
            if self.multi_caption and getattr(processors[c], "kind", None) != "text":
                raise ValueError(f"evals.{name}.multi_caption: candidates {c!r} is not text")
            if self.multi_caption:
                processors[c] = CaptionListProcessor(processors[c], field)
            else:
                processors[c] = copy.copy(processors[c])
                processors[c].name = field
        super().__init__(name, cfg, processors=processors, **kwargs)

    @property
    def modalities(self) -> list[str]:
        same_if = self.config["same_if"]
        return list(dict.fromkeys([*super().modalities, *([same_if] if same_if else [])]))

    def _multi_caption_pass(self, embed: common.EmbedFns):
        """-> (query embeddings [N, d], every caption's tokens [M, L], its query [M])."""
        q, c = self.config["query"], self.config["candidates"]
        embs, captions, owners, offset = [], [], [], 0
        for batch in self.data.batches():
            emb, _ = common.embed_pass([batch], q, embed[q])
            tokens, owner = flatten_captions(np.asarray(batch[c]), offset)
            embs.append(emb)
            captions.append(tokens)
            owners.append(owner)
            offset += len(emb)
        if not embs:
            raise ValueError("the eval data is empty")
        return np.concatenate(embs), np.concatenate(captions), np.concatenate(owners)

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        q, c, same_if = self.config["query"], self.config["candidates"], self.config["same_if"]
        if self.multi_caption:
            q_emb, cand, cand_to_query = self._multi_caption_pass(embed)
            c_emb = common.embed_in_batches(embed[c], cand, self.batch_size)
            return self._named(retrieval_metrics(q_emb, c_emb, cand_to_query, ks=self.KS))
        keep = tuple(dict.fromkeys((c, *([same_if] if same_if else []))))
        q_emb, kept = common.embed_pass(self.data.batches(), q, embed[q], keep)
        if same_if:
            _, group = np.unique(kept[same_if], axis=0, return_inverse=True)
            group = group.reshape(-1)
            cand, cand_to_query = kept[c], [np.flatnonzero(group == g) for g in group]
        else:
            cand, cand_to_query = dedupe_texts(kept[c])
        c_emb = common.embed_in_batches(embed[c], cand, self.batch_size)
        return self._named(retrieval_metrics(q_emb, c_emb, cand_to_query, ks=self.KS))

    def _named(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """``img2txt_*``/``txt2img_*`` renamed for this evaluator's modalities, prefixed."""
        q, c = self.config["query"], self.config["candidates"]
        names = {
            "img2txt": f"{common.metric_name(q)}2{common.metric_name(c)}",
            "txt2img": f"{common.metric_name(c)}2{common.metric_name(q)}",
        }
        return self._prefixed(
            {names[k.split("_", 1)[0]] + "_" + k.split("_", 1)[1]: v for k, v in metrics.items()}
        )
