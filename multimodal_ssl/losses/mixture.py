"""A weighted sum of objectives: ``loss.name = "mix"``, ``L = sum_k w_k L_k``.

Each term is a full objective config of its own plus a ``weight``, under
``loss.terms.<term>``; every key is settable from the command line
(``--config.loss.terms.simclr.weight=0.5``, ``--config.loss.terms.clip.impl=ring``)::

    config.loss = mix_config(clip=mix_term("softmax"), simclr=mix_term("simclr", weight=1.0))

Each term owns its params (the union must not repeat a name: an error names both
terms) and logs ``train/loss/<term>`` (its unweighted loss) and its own metrics under
``train/<term>/...`` (``train/clip/t``, ``train/clip/loss/image_text``). Terms that
take unit rows get L2-normalised embeddings even when another term takes the raw
projections (``unit_rows`` is False when any term's is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.losses.common import acc_dtype
from multimodal_ssl.losses.objectives import Objective, objective_class, register_objective


def normalize_rows(z: jax.Array) -> jax.Array:
    """``z: [B, d]`` -> unit rows in >= f32, as the towers' ``l2_normalize`` (squared-norm
    floor 1e-12: zero rows stay zero), keeping f64 for the float64 tests."""
    z = z.astype(acc_dtype(z))
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def child_resolve(cfg: Mapping[str, Any], modalities: Sequence[str], path: str) -> dict:
    """Resolves the objective config ``cfg`` found at ``config.loss.<path>``: its errors
    name ``config.loss.<path>.<key>``."""
    if not isinstance(cfg, Mapping | ml_collections.ConfigDict) or "name" not in cfg:
        raise ValueError(f"config.loss.{path}: must be an objective config with a 'name' key")
    try:
        return objective_class(cfg["name"]).resolve(cfg, modalities)
    except ValueError as e:
        raise ValueError(str(e).replace("config.loss.", f"config.loss.{path}.", 1)) from None


def child_embeddings(
    embeddings: Mapping[str, jax.Array], parent: Objective, child: Objective
) -> dict[str, jax.Array]:
    """``embeddings`` in the form ``child`` takes: normalised when the parent received raw
    projections and the child wants unit rows."""
    if child.unit_rows and not parent.unit_rows:
        return {m: normalize_rows(e) for m, e in embeddings.items()}
    return dict(embeddings)


def nest_metrics(metrics: Mapping[str, jax.Array], name: str) -> dict[str, jax.Array]:
    """``train/<rest>`` -> ``train/<name>/<rest>``."""
    return {f"train/{name}/{k.removeprefix('train/')}": v for k, v in metrics.items()}


def mix_term(name: str, weight: float = 1.0, **overrides: Any) -> ml_collections.ConfigDict:
    """One term of ``loss.terms``: objective ``name``'s full config and its ``weight``."""
    cfg = objective_class(name).default_config()
    for key, value in overrides.items():  # assigned, not merged: nested configs replace
        cfg[key] = value
    cfg.weight = float(weight)
    return cfg


def mix_config(**terms: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.loss`` of a mixture of the named :func:`mix_term` configs."""
    cfg = Mixture.default_config()
    cfg.terms = ml_collections.ConfigDict(terms)
    return cfg


@register_objective
class Mixture(Objective):
    """Weighted sum of objectives (module docstring). Keys: ``terms``
    (``{term: {name, weight, ...that objective's keys}}``)."""

    NAME = "mix"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.terms = ml_collections.ConfigDict()
        return cfg

    @classmethod
    def resolve(cls, cfg, modalities):
        out = super().resolve(cfg, modalities)
        terms = out["terms"]
        if not terms:
            raise ValueError(
                "config.loss.terms: a mixture needs at least one term, e.g. "
                "{'clip': mix_term('softmax'), 'simclr': mix_term('simclr')}"
            )
        resolved = {}
        for term, tcfg in terms.items():
            if not isinstance(tcfg, Mapping | ml_collections.ConfigDict):
                raise ValueError(f"config.loss.terms.{term}: expected an objective config")
            tcfg = dict(tcfg)
            weight = tcfg.pop("weight", 1.0)
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"config.loss.terms.{term}.weight: must be >= 0, got {weight!r}")
            child_resolve(tcfg, modalities, f"terms.{term}")
            resolved[term] = (float(weight), tcfg)
        out["terms"] = resolved
        return out

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        self.terms = {
            term: (weight, objective_class(tcfg["name"])(tcfg, modalities, optional, **kw))
            for term, (weight, tcfg) in self.config["terms"].items()
        }
        self.unit_rows = all(obj.unit_rows for _, obj in self.terms.values())

    def init_params(self) -> dict[str, jax.Array]:
        params: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for term, (_, obj) in self.terms.items():
            for key, value in obj.init_params().items():
                if key in params:
                    raise ValueError(
                        f"config.loss.terms: terms {owner[key]!r} and {term!r} both have a "
                        f"param {key!r}; give them different pairs/views or mix them apart"
                    )
                params[key], owner[key] = value, term
        return params

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        total, metrics = 0.0, {}
        for term, (weight, obj) in self.terms.items():
            emb = child_embeddings(embeddings, self, obj)
            loss, sub = obj(emb, params, masks=masks, mesh=mesh, rng=rng)
            total = total + weight * loss
            metrics[f"train/loss/{term}"] = loss
            metrics.update(nest_metrics(sub, term))
        return total, metrics
