"""Image<->text retrieval: recall@k and mean/median rank in both directions.

Scores are dot products of the embeddings, computed in query chunks so an N x M score
matrix never exists; ties count against the query (see ``common``'s module docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from multimodal_ssl.evals import common


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


def dedupe_texts(tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """tokens [N, L] int, row i the caption of image i -> (unique rows [M, L],
    the images of each unique row: M int arrays). Identical token rows are one text
    belonging to all their images, so a perfect model is not penalised by the exact
    ties between copies of one caption."""
    unique, inverse = np.unique(tokens, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
    return unique, np.split(order, splits)


class RetrievalEvaluator(common.PairEvaluator):
    """Retrieval between the ``query`` and ``candidates`` modalities (default image and
    text) of the examples of ``data``, in both directions.

    Config keys: see ``default_config``. Identical candidate inputs (e.g. the same
    caption) are merged into one candidate that belongs to all their queries (see
    ``dedupe_texts``). ``same_if`` (a modality, default None): a candidate is correct for
    every query whose example has the identical ``same_if`` input (e.g. ``"text"``: any
    clip of a scene with the same caption is a correct match for an image), instead of
    only its own example's. Examples lacking either modality are left out. Metrics:
    ``eval/<name>/{q}2{c}_r@{1,5,10}``, ``{c}2{q}_...`` and ``..._{mean,median}_rank``,
    with ``img``/``txt`` for image/text (``img2txt_r@1``, ``audio2txt_r@1``, ...).
    """

    TYPE = "retrieval"
    KS = (1, 5, 10)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.same_if = ml_collections.config_dict.placeholder(str)  # e.g. "text"
        return cfg

    @property
    def modalities(self) -> list[str]:
        same_if = self.config["same_if"]
        return list(dict.fromkeys([*super().modalities, *([same_if] if same_if else [])]))

    def compute(self, embed: common.EmbedFns) -> dict[str, float]:
        q, c, same_if = self.config["query"], self.config["candidates"], self.config["same_if"]
        keep = tuple(dict.fromkeys((c, *([same_if] if same_if else []))))
        q_emb, kept = common.embed_pass(self.data.batches(), q, embed[q], keep)
        if same_if:
            _, group = np.unique(kept[same_if], axis=0, return_inverse=True)
            group = group.reshape(-1)
            cand, cand_to_query = kept[c], [np.flatnonzero(group == g) for g in group]
        else:
            cand, cand_to_query = dedupe_texts(kept[c])
        c_emb = common.embed_in_batches(embed[c], cand, self.batch_size)
        metrics = retrieval_metrics(q_emb, c_emb, cand_to_query, ks=self.KS)
        names = {
            "img2txt": f"{common.metric_name(q)}2{common.metric_name(c)}",
            "txt2img": f"{common.metric_name(c)}2{common.metric_name(q)}",
        }
        return self._prefixed(
            {names[k.split("_", 1)[0]] + "_" + k.split("_", 1)[1]: v for k, v in metrics.items()}
        )
