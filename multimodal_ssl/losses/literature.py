"""Objectives from the multimodal literature, registered by name (``config.loss.name``):

* ``dcl``: decoupled contrastive learning over ``loss.pairs`` (:mod:`.dcl`);
* ``symile``: the multilinear inner product of all modalities (:mod:`.symile`,
  :mod:`.ring_symile`);
* ``gram``: the Gram-determinant volume of an anchor and the other modalities
  (:mod:`.gram`).

Symile and GRAM take every tower of the model (sorted by name) and need every example to
have every modality (no masks). Imported by :mod:`.objectives`, which registers them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.losses import common, dcl, gram, ring_symile, symile
from multimodal_ssl.losses.objectives import Objective, Pairwise, _fail, register_objective


@register_objective
class Decoupled(Pairwise):
    """DCL (Yeh et al. 2022): CLIP's two cross-entropies of ``e^t x @ y.T`` with the
    positive out of the denominators, per pair; scalar ``t`` (init ``t_init``)."""

    NAME = "dcl"

    def pair_loss(self, x, y, scalars, mesh):
        return dcl.dcl_loss(x, y, scalars["t"], **self._impl_kwargs(mesh))

    def pair_loss_masked(self, x, y, scalars, vx, vy):
        return dcl.dcl_masked(x, y, scalars["t"], vx, vy)


class _AllModalities(Objective):
    """An objective over every tower at once: ``t`` (init ``t_init``), no masks."""

    T_INIT = math.log(10.0)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.t_init = cls.T_INIT
        return cfg

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        self.order = tuple(sorted(self.modalities))
        if len(self.order) < 2:
            _fail("name", f"{self.NAME!r} needs at least 2 towers, got {list(self.order)}")
        if self.optional:
            _fail(
                "name",
                f"{self.NAME!r} needs every example to have every modality, but some training "
                f"sources lack {sorted(self.optional)}",
            )

    def init_params(self) -> dict[str, jax.Array]:
        return {"t": jnp.asarray(self.config["t_init"], jnp.float32)}


@register_objective
class Symile(_AllModalities):
    """Symile (Saporta et al. 2024) over every tower (>= 2; sorted). Keys: ``negatives``
    (``n``: O(n) shuffled, needs the step's rng; ``n_squared``: every combination of the
    non-anchor rows), ``impl`` (``global``; ``ring`` with ``n_squared``), ``chunk_size``
    (ring: home rows scored per step, None = the local batch), ``t_init``.
    Metrics: ``train/t``, ``train/loss/<anchor>`` per anchor modality."""

    NAME = "symile"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.negatives = "n"
        cfg.impl = "global"
        cfg.chunk_size = ml_collections.config_dict.placeholder(int)
        return cfg

    @classmethod
    def resolve(cls, cfg: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
        out = super().resolve(cfg, modalities)
        if out["negatives"] not in symile.NEGATIVES:
            _fail("negatives", f"{out['negatives']!r} is not one of {list(symile.NEGATIVES)}")
        if out["impl"] not in ("global", "ring"):
            _fail("impl", f"{out['impl']!r} is not one of ['global', 'ring'] for symile")
        if out["impl"] == "ring" and out["negatives"] != "n_squared":
            _fail("impl", "'ring' needs negatives='n_squared' (the O(n) form is dense only)")
        try:
            common.check_chunk_size(out["chunk_size"])
        except ValueError as e:
            _fail("chunk_size", str(e))
        return out

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        embs = [embeddings[m] for m in self.order]
        if self.config["negatives"] == "n":
            if rng is None:
                raise ValueError("symile negatives='n' shuffles the batch and needs rng=")
            perms = symile.shuffle_permutations(rng, len(embs), embs[0].shape[0])
            loss, per_anchor = symile.symile_n(embs, params["t"], perms)
        elif self.config["impl"] == "ring":
            loss, per_anchor = ring_symile.symile_ring(
                embs, params["t"], mesh, chunk_size=self.config["chunk_size"]
            )
        else:
            loss, per_anchor = symile.symile_n_squared(embs, params["t"])
        metrics = {f"train/loss/{m}": per_anchor[k] for k, m in enumerate(self.order)}
        return loss, {**metrics, "train/t": params["t"]}


@register_objective
class Gram(_AllModalities):
    """GRAM (Cicchetti et al. 2025) over every tower: the volume of the anchor (``anchor``,
    default ``text``) with the others, contrasted both ways. Keys: ``anchor``,
    ``label_smoothing`` (0; the reference code uses 0.1), ``t_init`` (log(1/0.07)).
    Metrics: ``train/t``."""

    NAME = "gram"
    T_INIT = math.log(1 / 0.07)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.anchor = "text"
        cfg.label_smoothing = 0.0
        return cfg

    @classmethod
    def resolve(cls, cfg: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
        out = super().resolve(cfg, modalities)
        if out["anchor"] not in modalities:
            _fail("anchor", f"{out['anchor']!r} has no tower; towers: {sorted(modalities)}")
        if not 0.0 <= out["label_smoothing"] < 1.0:
            _fail("label_smoothing", f"{out['label_smoothing']!r} is not in [0, 1)")
        return out

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        anchor = self.config["anchor"]
        others = [embeddings[m] for m in self.order if m != anchor]
        loss = gram.gram_loss(
            embeddings[anchor], others, params["t"], self.config["label_smoothing"]
        )
        return loss, {"train/t": params["t"]}
