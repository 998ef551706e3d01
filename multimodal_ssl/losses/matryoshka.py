"""Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022, arXiv 2205.13147):
any objective applied at nested prefixes of the embeddings, so that the first ``m``
dimensions alone are a usable embedding for every ``m`` in ``dims``:

    L = sum_{m in dims} w_m * L_inner(e[:, :m] / |e[:, :m]|)        (w_m = 1: MRL's c_m)

(the prefix is re-normalised for an inner objective that takes unit rows; one that
takes raw projections gets the raw prefix). Each prefix has its own copy of the inner
objective's params (``t`` -> ``t_d16``, ...), since the logit scale of ``m``-dim cosines
differs. Metrics: ``train/loss/d<m>`` (unweighted) and the inner objective's under
``train/d<m>/...``. Evaluate the prefixes with an eval's ``dims`` key
(``eval/<name>/d<m>/<metric>``; evals/common.py).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from multimodal_ssl.losses.mixture import child_resolve, nest_metrics, normalize_rows
from multimodal_ssl.losses.objectives import (
    Objective,
    objective_class,
    objective_config,
    register_objective,
)


def parse_dims(value: Any, key: str = "config.loss.dims") -> tuple[int, ...]:
    """``(16, 32)``, ``[16, 32]`` or ``"16,32"`` -> strictly increasing positive ints;
    ValueError naming ``key``."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        dims = tuple(int(str(d).strip()) for d in items or ())
    except (TypeError, ValueError):
        dims = ()
    increasing = all(a < b for a, b in zip(dims, dims[1:], strict=False))
    ok = dims and all(d >= 1 for d in dims) and increasing
    if not ok:
        raise ValueError(
            f"{key}: expected increasing positive ints such as (16, 32, 64, 128), got {value!r}"
        )
    return dims


def prefix_name(param: str, dim: int) -> str:
    """The top-level param name of the inner objective's ``param`` at prefix ``dim``."""
    return f"{param}_d{dim}"


@register_objective
class Matryoshka(Objective):
    """The inner objective ``loss.objective`` at the prefixes ``loss.dims`` with weights
    ``loss.weights`` (None = 1 each); see the module docstring."""

    NAME = "matryoshka"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.dims = (16, 32, 64, 128)
        cfg.weights = ml_collections.config_dict.placeholder(tuple)
        cfg.objective = objective_config("sigmoid")
        return cfg

    @classmethod
    def resolve(cls, cfg, modalities):
        out = super().resolve(cfg, modalities)
        out["dims"] = parse_dims(out["dims"])
        weights = out["weights"]
        if weights is None:
            weights = (1.0,) * len(out["dims"])
        if len(weights) != len(out["dims"]) or any(
            not isinstance(w, int | float) or isinstance(w, bool) or w < 0 for w in weights
        ):
            raise ValueError(
                f"config.loss.weights: expected {len(out['dims'])} numbers >= 0 (one per dim "
                f"of {out['dims']}), got {out['weights']!r}"
            )
        out["weights"] = tuple(float(w) for w in weights)
        out["objective"] = dict(out["objective"])
        if out["objective"].get("name") == cls.NAME:
            raise ValueError("config.loss.objective.name: a matryoshka cannot nest another one")
        child_resolve(out["objective"], modalities, "objective")
        return out

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        dims = self.config["dims"]
        if self.embed_dim is not None and dims[-1] > self.embed_dim:
            raise ValueError(
                f"config.loss.dims: {dims[-1]} exceeds model.embed_dim {self.embed_dim}"
            )
        inner = self.config["objective"]
        self.inner = {
            m: objective_class(inner["name"])(inner, modalities, optional, embed_dim=m)
            for m in dims
        }
        self.unit_rows = next(iter(self.inner.values())).unit_rows
        # The inner objective's param names (shapes only; nothing is computed).
        self._names = {m: list(jax.eval_shape(obj.init_params)) for m, obj in self.inner.items()}

    def init_params(self) -> dict[str, jax.Array]:
        return {
            prefix_name(k, m): v
            for m, obj in self.inner.items()
            for k, v in obj.init_params().items()
        }

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        total, metrics = 0.0, {}
        for (m, obj), weight in zip(self.inner.items(), self.config["weights"], strict=True):
            d = next(iter(embeddings.values())).shape[1]
            if m > d:
                raise ValueError(f"config.loss.dims: {m} exceeds the embedding width {d}")
            prefix = {k: e[:, :m] for k, e in embeddings.items()}
            if obj.unit_rows:
                prefix = {k: normalize_rows(e) for k, e in prefix.items()}
            own = {k: params[prefix_name(k, m)] for k in self._names[m]}
            loss, sub = obj(prefix, own, masks=masks, mesh=mesh, rng=rng)
            total = total + weight * loss
            metrics[f"train/loss/d{m}"] = loss
            metrics.update(nest_metrics(sub, f"d{m}"))
        return total, metrics
