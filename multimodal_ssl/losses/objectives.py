"""Training objectives by name: ``config.loss.name`` picks one from :data:`OBJECTIVES`.

An objective is a pure function of the embeddings and its own parameters::

    objective = make_objective(config.loss, modalities=("image", "text"))
    params = objective.init_params()          # {"t": ..., "b": ...}, stored in the state
    loss, metrics = objective(embeddings, params, masks=None, mesh=mesh, rng=rng)

``embeddings``: ``{modality: [B, d] f32}`` (L2-normalised, batch-sharded); ``masks``:
``{modality: bool [B]}`` for modalities some examples lack (None = all present);
``metrics``: scalars named ``train/<metric>[/<pair>]``. Each objective owns the keys of
``config.loss`` (its :meth:`Objective.default_config`, checked by
:meth:`Objective.resolve` before anything is built, errors naming ``config.loss.<key>``),
the modalities it needs and the initialisation of its parameters.

Adding an objective: subclass :class:`Objective`, set ``NAME``, implement
``default_config``, ``resolve`` (optional), ``init_params`` and ``__call__``, and
decorate it with :func:`register_objective`.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from multimodal_ssl.losses import common, masked, sigmoid_loss, softmax_loss

Metrics = dict[str, jax.Array]
OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: makes ``config.loss.name = cls.NAME`` build ``cls``."""
    if cls.NAME in OBJECTIVES:
        raise ValueError(f"objective {cls.NAME!r} is already registered")
    OBJECTIVES[cls.NAME] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    """The objective registered as ``name``; ValueError naming config.loss.name."""
    if name not in OBJECTIVES:
        raise ValueError(f"config.loss.name: {name!r} is not one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The full ``config.loss`` subtree of objective ``name`` with its defaults (every key
    settable from the command line), updated with ``overrides``."""
    cfg = objective_class(name).default_config()
    cfg.update(overrides)
    return cfg


def make_objective(
    cfg: Mapping[str, Any],
    modalities: Sequence[str],
    optional: Sequence[str] = (),
    *,
    embed_dim: int | None = None,
) -> Objective:
    """Builds ``config.loss`` for a model with towers for ``modalities``; ``optional``:
    the modalities some training examples lack (their masks reach the objective);
    ``embed_dim``: the embeddings' width (for objectives with heads of their own)."""
    return objective_class(cfg["name"])(cfg, modalities, optional, embed_dim=embed_dim)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config.loss.{key}: {message}")


class Objective(abc.ABC):
    """Base of every objective (see the module docstring). ``unit_rows``: whether it
    takes the L2-normalised embeddings (the default) or the towers' raw projections
    (the train step asks the model for those when False)."""

    NAME: ClassVar[str]
    unit_rows: bool = True

    def __init__(
        self,
        cfg: Mapping[str, Any],
        modalities: Sequence[str],
        optional: Sequence[str] = (),
        *,
        embed_dim: int | None = None,
    ):
        self.modalities = tuple(modalities)
        self.optional = frozenset(optional)
        self.embed_dim = embed_dim
        self.config = self.resolve(cfg, self.modalities)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """Every key of ``config.loss`` for this objective, with its default."""
        return ml_collections.ConfigDict({"name": cls.NAME})

    @classmethod
    def resolve(cls, cfg: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
        """``cfg`` over the defaults, checked; ValueError names ``config.loss.<key>``.

        A key of another objective left at that objective's default is dropped, so one
        flag switches objectives (``--config.loss.name=softmax`` on a sigmoid recipe
        drops its ``b_init``); set to anything else it is an error."""
        defaults = cls.default_config()
        kept = {}
        for key in cfg.keys():
            if key in defaults:
                kept[key] = cfg[key]
                continue
            owners = [o for o in OBJECTIVES.values() if key in o.default_config()]
            if not owners or any(o.default_config()[key] != cfg[key] for o in owners):
                known = f" (a key of {sorted(o.NAME for o in owners)})" if owners else ""
                _fail(
                    key,
                    f"unknown key for objective {cls.NAME!r}{known}; valid keys {sorted(defaults)}",
                )
        return {**defaults.to_dict(), **kept}

    @abc.abstractmethod
    def init_params(self) -> dict[str, jax.Array]:
        """This objective's parameters: ``{top-level param name: f32 array}``."""

    @abc.abstractmethod
    def __call__(
        self,
        embeddings: Mapping[str, jax.Array],
        params: Mapping[str, jax.Array],
        *,
        masks: Mapping[str, jax.Array] | None = None,
        mesh: Mesh | None = None,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, Metrics]:
        """-> (scalar loss, ``{"train/...": scalar}``)."""


def parse_pairs(spec: Any, modalities: Sequence[str]) -> list[tuple[str, str]]:
    """``loss.pairs`` -> modality pairs. Forms: ``"image-text,image-audio"`` (or a list of
    2-tuples), ``"anchor:image"`` (every other modality against the anchor, ImageBind),
    ``"all"`` (every unordered pair). Modalities are taken in sorted order."""
    names = sorted(modalities)
    if isinstance(spec, str) and spec == "all":
        items = list(itertools.combinations(names, 2))
    elif isinstance(spec, str) and spec.startswith("anchor:"):
        anchor = spec.partition(":")[2]
        if anchor not in names:
            _fail("pairs", f"anchor {anchor!r} has no tower; towers: {names}")
        items = [(anchor, m) for m in names if m != anchor]
    elif isinstance(spec, str):
        items = [tuple(m.strip() for m in p.split("-")) for p in spec.split(",") if p.strip()]
    else:
        items = [tuple(p) for p in spec or ()]
    if not items:
        _fail(
            "pairs",
            f"no pairs in {spec!r} for towers {names}; e.g. 'image-text', 'anchor:image' or "
            "'all' (with at least two towers)",
        )
    for pair in items:
        if len(pair) != 2 or pair[0] == pair[1]:
            _fail("pairs", f"{'-'.join(pair)!r} is not a pair of two modalities 'a-b'")
        for m in pair:
            if m not in names:
                _fail(
                    "pairs",
                    f"{'-'.join(pair)!r} names modality {m!r}, which has no tower "
                    f"(config.model.towers has {names})",
                )
    if len({frozenset(p) for p in items}) != len(items):
        _fail("pairs", f"{spec!r} lists a pair twice (a-b and b-a are the same pair)")
    return items


class Pairwise(Objective):
    """A two-modality contrastive loss summed over modality pairs (mean over pairs).

    Keys: ``impl`` (``global``, ``all_gather``, ``ring``) and ``chunk_size`` as
    :func:`multimodal_ssl.losses.sigmoid_loss`; ``pairs`` (:func:`parse_pairs`; default
    the image/text pair); ``t_init`` (log-scale); ``shared``: one set of scalars for
    every pair. Params: ``t`` (and ``b``) with one pair or ``shared``, else
    ``t_<a>_<b>`` per pair. Metrics: ``train/loss/<a>_<b>``, ``train/t/<a>_<b>``, and
    ``train/t`` (``train/b``) when the scalars are shared.
    """

    SCALARS: ClassVar[tuple[str, ...]] = ("t",)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.impl = "global"
        cfg.chunk_size = ml_collections.config_dict.placeholder(int)
        cfg.pairs = "image-text"
        cfg.shared = False
        cfg.t_init = math.log(10.0)
        return cfg

    @classmethod
    def resolve(cls, cfg: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
        out = super().resolve(cfg, modalities)
        if out["impl"] not in common.IMPLS:
            _fail("impl", f"{out['impl']!r} is not one of {list(common.IMPLS)}")
        try:
            common.check_chunk_size(out["chunk_size"])
        except ValueError as e:
            _fail("chunk_size", str(e))
        out["pairs"] = parse_pairs(out["pairs"], modalities)
        return out

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        self.pairs = self.config["pairs"]
        for pair in self.pairs:
            missing = self.optional.intersection(pair)
            if missing and self.config["impl"] != "global":
                _fail(
                    "impl",
                    f"{self.config['impl']!r} needs every example to have both modalities of "
                    f"pair {'-'.join(pair)}, but some training sources lack {sorted(missing)}; "
                    "use impl='global' (masked) for such mixtures",
                )
        self.shared = self.config["shared"] or len(self.pairs) == 1

    def param_name(self, scalar: str, pair: tuple[str, str]) -> str:
        return scalar if self.shared else f"{scalar}_{pair[0]}_{pair[1]}"

    def init_params(self) -> dict[str, jax.Array]:
        values = {s: self.config[f"{s}_init"] for s in self.SCALARS}
        return {
            self.param_name(s, pair): jnp.asarray(values[s], jnp.float32)
            for pair in self.pairs
            for s in self.SCALARS
        }

    @abc.abstractmethod
    def pair_loss(
        self, x: jax.Array, y: jax.Array, scalars: dict[str, jax.Array], mesh: Mesh | None
    ) -> jax.Array:
        """Loss of one pair with every row present: x, y [B, d]."""

    @abc.abstractmethod
    def pair_loss_masked(
        self, x, y, scalars: dict[str, jax.Array], vx: jax.Array, vy: jax.Array
    ) -> jax.Array:
        """Loss of one pair where rows may be absent (bool [B] masks), dense."""

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        masks = masks or {}
        total, metrics = 0.0, {}
        for a, b in self.pairs:
            scalars = {s: params[self.param_name(s, (a, b))] for s in self.SCALARS}
            x, y = embeddings[a], embeddings[b]
            if a in masks or b in masks:
                ones = jnp.ones(x.shape[0], bool)
                loss = self.pair_loss_masked(x, y, scalars, masks.get(a, ones), masks.get(b, ones))
            else:
                loss = self.pair_loss(x, y, scalars, mesh)
            total = total + loss
            metrics[f"train/loss/{a}_{b}"] = loss
            for s, value in scalars.items():
                metrics[f"train/{s}" if self.shared else f"train/{s}/{a}_{b}"] = value
        return total / len(self.pairs), metrics

    def _impl_kwargs(self, mesh: Mesh | None) -> dict[str, Any]:
        return {"impl": self.config["impl"], "mesh": mesh, "chunk_size": self.config["chunk_size"]}


@register_objective
class Sigmoid(Pairwise):
    """SigLIP (Zhai et al. 2023): ``-1/B sum_ij log sigmoid(z_ij (e^t x_i.y_j + b))``
    per pair; scalars ``t`` (init ``t_init``) and ``b`` (init ``b_init``, -10)."""

    NAME = "sigmoid"
    SCALARS = ("t", "b")

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.b_init = -10.0
        return cfg

    def pair_loss(self, x, y, scalars, mesh):
        return sigmoid_loss(x, y, scalars["t"], scalars["b"], **self._impl_kwargs(mesh))

    def pair_loss_masked(self, x, y, scalars, vx, vy):
        return masked.sigmoid_masked(x, y, scalars["t"], scalars["b"], vx, vy)


@register_objective
class Softmax(Pairwise):
    """CLIP / InfoNCE (Radford et al. 2021): mean of the two cross-entropies of
    ``e^t x @ y.T`` per pair; scalar ``t`` (init ``t_init``; CLIP: log(1/0.07))."""

    NAME = "softmax"

    def pair_loss(self, x, y, scalars, mesh):
        return softmax_loss(x, y, scalars["t"], **self._impl_kwargs(mesh))

    def pair_loss_masked(self, x, y, scalars, vx, vy):
        return masked.softmax_masked(x, y, scalars["t"], vx, vy)

