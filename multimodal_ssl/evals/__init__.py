"""Evaluations run by the trainer every ``evals.<name>.every_steps`` steps and at the end.

An evaluator type is a :class:`~multimodal_ssl.evals.common.Evaluator` subclass with

* ``default_config() -> ConfigDict``: every key of ``evals.<name>`` with its default
  (the config validator checks user keys against it);
* ``__init__(name, cfg, *, processors, image_size, seed, source_kwargs=None)``: builds
  its data once (``processors``: the eval preprocessing of every modality);
* ``MODALITY_KEYS``: the config keys naming its modalities (``query``, ``candidates``);
* ``run({modality: embed_fn}) -> {"eval/<name>/<metric>": float}``.

Types: ``zeroshot``, ``retrieval``, ``knn``, ``linear_probe`` (both fit on a labelled
``train_data`` split), ``geometry``, ``dense_probe`` (segmentation from patch tokens),
``locca`` (greedy decoding of SigLIP 2's decoder), ``fused`` (zero-shot and retrieval from
several query modalities at once and with each missing in turn). Adding a type means one
entry in ``EVALUATORS``. The metric functions
(``zeroshot_metrics``, ``retrieval_metrics``, ``knn_metrics``, ``linear_probe_metrics``,
``geometry_metrics``, ``dense_probe_metrics``, ``fused_metrics``, ``class_embeddings``) are
pure and need
no model. :mod:`.benchmarks` holds the standard zero-shot and retrieval benchmarks (class
names, prompt templates, TFDS specs) that ``zeroshot`` / ``retrieval`` pick by name.
"""

from __future__ import annotations

from multimodal_ssl.evals.common import Evaluator
from multimodal_ssl.evals.dense_probe import DenseProbeEvaluator, dense_probe_metrics
from multimodal_ssl.evals.fused import FusedEvaluator, fused_metrics
from multimodal_ssl.evals.geometry import GeometryEvaluator, geometry_metrics
from multimodal_ssl.evals.knn import KnnEvaluator, knn_metrics
from multimodal_ssl.evals.linear_probe import LinearProbeEvaluator, linear_probe_metrics
from multimodal_ssl.evals.locca import LoccaEvaluator
from multimodal_ssl.evals.retrieval import RetrievalEvaluator, retrieval_metrics
from multimodal_ssl.evals.zeroshot import ZeroShotEvaluator, class_embeddings, zeroshot_metrics

EVALUATORS: dict[str, type[Evaluator]] = {
    cls.TYPE: cls
    for cls in (
        ZeroShotEvaluator,
        RetrievalEvaluator,
        KnnEvaluator,
        LinearProbeEvaluator,
        GeometryEvaluator,
        LoccaEvaluator,
        DenseProbeEvaluator,
        FusedEvaluator,
    )
}


def get_evaluator(type_name: str) -> type[Evaluator]:
    """The evaluator class registered as ``type_name``; ValueError lists the valid ones."""
    if type_name not in EVALUATORS:
        raise ValueError(
            f"unknown evaluator type {type_name!r}; valid types are {sorted(EVALUATORS)}"
        )
    return EVALUATORS[type_name]


__all__ = [
    "EVALUATORS",
    "DenseProbeEvaluator",
    "Evaluator",
    "FusedEvaluator",
    "GeometryEvaluator",
    "KnnEvaluator",
    "LinearProbeEvaluator",
    "RetrievalEvaluator",
    "ZeroShotEvaluator",
    "class_embeddings",
    "dense_probe_metrics",
    "fused_metrics",
    "geometry_metrics",
    "get_evaluator",
    "knn_metrics",
    "linear_probe_metrics",
    "retrieval_metrics",
    "zeroshot_metrics",
]
