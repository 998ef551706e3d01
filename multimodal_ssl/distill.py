"""SigLIP 2's self-distillation and masked prediction as extra terms of the train step.

Why not an objective (``losses/objectives.py``): objectives are functions of the pooled,
normalised embeddings of the contrastive batch and their own scalars. These terms need a
second set of image-tower params (the EMA teacher, in the train state), extra inputs
(local crops), un-pooled patch tokens and their own forward passes; so the train step
adds them (``train_state.make_train_step``) next to whatever ``config.loss`` is.

``config.distill`` (all in :func:`default_config`; off while both weights are 0):

* ``local_weight`` (SILC local-to-global) and ``masked_weight`` (TIPS masked
  prediction): their weights in ``train/loss``; 0 switches a term off.
* ``start``: fraction of ``total_steps`` after which the terms are on (SigLIP 2: 0.8);
  step ``s0 = round(start * total_steps)`` (0-based, the logged step ``s0 + 1``) is the
  first one. At ``s0`` the teacher is set to the student, then follows it as an EMA
  with momentum ``ema`` after every optimizer step. Before ``s0`` the terms are not
  computed (``lax.cond``), and the head and mask token are not updated.
* ``modality``: the ViT tower distilled (``image``).
* ``num_local`` local crops per image at ``local_size`` px by ``local_pp`` (the data
  pipeline adds them as ``<modality>_local`` f32 [B, n, h, h, 3]).
* ``mask_ratio``: fraction of the student's patches replaced by the mask token.
* head: ``head_hidden``, ``head_bottleneck``, ``prototypes`` (``models.distill_head``);
  ``student_temp``, ``teacher_temp``, ``center_momentum`` (DINO).

Formulas: ``losses/distill.py``. Params: ``params["distill"] = {"head": ...,
"mask_token": [width]}`` (trained with the rest); ``state.teacher = {"params":
{<tower>: ..., "distill": ...}, "center": [K], "center_patch": [K]}`` (checkpointed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.losses import distill as dl
from multimodal_ssl.models.distill_head import DistillHead
from multimodal_ssl.models.towers import MultiTower, param_name, tower_class
from multimodal_ssl.optim import merge_params

PARAMS = "distill"  # top-level key of the student's extra params
_MASK_SALT = 0x5D1571  # folded into the step key for the patch masks and student dropout


def default_config() -> ml_collections.ConfigDict:
    """Every key of ``config.distill`` with its default (off)."""
    return ml_collections.ConfigDict(
        {
            "local_weight": 0.0,
            "masked_weight": 0.0,
            "start": 0.8,
            "modality": "image",
            "ema": 0.999,
            "num_local": 4,
            "local_size": ml_collections.config_dict.placeholder(int),
            "local_pp": "random_resized_crop(0.05, 0.4)|flip_lr|value_range(-1, 1)",
            "mask_ratio": 0.5,
            "head_hidden": 512,
            "head_bottleneck": 128,
            "prototypes": 1024,
            "student_temp": 0.1,
            "teacher_temp": 0.04,
            "center_momentum": 0.9,
        }
    )


def enabled(config: Any) -> bool:
    """Whether ``config.distill`` switches any term on."""
    d = config.get("distill") if hasattr(config, "get") else None
    return d is not None and (d.local_weight > 0 or d.masked_weight > 0)


def local_views(config: Any) -> tuple[str, str, int, int] | None:
    """``(modality, pp spec, size, count)`` of the local crops the training pipeline must
    add, or None (local-to-global off)."""
    if not enabled(config) or config.distill.local_weight <= 0:
        return None
    d = config.distill
    return d.modality, d.local_pp, local_size(config), d.num_local


def local_size(config: Any) -> int:
    """``distill.local_size`` (default: half of ``data.image_size``)."""
    size = config.distill.local_size
    return config.data.image_size // 2 if size is None else size


def validate(config: ml_collections.ConfigDict) -> None:
    """ValueError naming ``config.distill.<key>`` for bad values (when enabled)."""
    d = config.distill

    def fail(key, message):
        raise ValueError(f"config.distill.{key}: {message}")

    for key in ("local_weight", "masked_weight"):
        if not d[key] >= 0:
            fail(key, f"must be >= 0 (0: off), got {d[key]!r}")
    if not enabled(config):
        return
    if not 0 <= d.start < 1:
        fail("start", f"must be in [0, 1) (fraction of total_steps), got {d.start!r}")
    if not 0 <= d.ema < 1:
        fail("ema", f"must be in [0, 1), got {d.ema!r}")
    tower = config.model.towers.get(d.modality)
    if tower is None or tower["type"] != "vit":
        fail("modality", f"{d.modality!r} must name a 'vit' tower of config.model.towers")
    if PARAMS in config.model.towers:
        fail("modality", f"a tower named {PARAMS!r} collides with the head's params; rename it")
    if tower.get("token_drop", 0) and d.masked_weight > 0:
        fail("masked_weight", f"needs config.model.towers.{d.modality}.token_drop = 0")
    for key in ("num_local", "head_hidden", "head_bottleneck", "prototypes"):
        if not (isinstance(d[key], int) and d[key] >= 1):
            fail(key, f"must be an int >= 1, got {d[key]!r}")
    for key in ("student_temp", "teacher_temp"):
        if not d[key] > 0:
            fail(key, f"must be > 0, got {d[key]!r}")
    if not 0 <= d.center_momentum < 1:
        fail("center_momentum", f"must be in [0, 1), got {d.center_momentum!r}")
    if not 0 < d.mask_ratio < 1:
        fail("mask_ratio", f"must be in (0, 1), got {d.mask_ratio!r}")
    if d.local_weight > 0:
        size = local_size(config)
        module = tower_class("vit")(**{k: v for k, v in tower.items() if k != "type"})
        patch = module.sizes()["patch_size"]
        if size < 1 or size % patch[0] or size % patch[1]:
            fail("local_size", f"{size} must be a positive multiple of the patch size {patch}")
        if size != config.data.image_size and module.posemb == "learn":
            fail(
                "local_size",
                f"{size} px differs from data.image_size {config.data.image_size}, which a "
                f"learned position embedding cannot take: set config.model.towers."
                f"{d.modality}.posemb='sincos2d' or local_size={config.data.image_size}",
            )


class SelfDistill:
    """The two terms for ``model``'s tower ``cfg["modality"]`` (``cfg``: the resolved
    ``config.distill``; ``total_steps``: of the run, for the start step)."""

    def __init__(self, cfg: Mapping[str, Any], model: MultiTower, total_steps: int):
        self.cfg = dict(cfg)
        self.modality = self.cfg["modality"]
        kwargs = {"num_classes": model.embed_dim, "dtype": model.dtype}
        kwargs.update(model.towers[self.modality])
        self.tower = tower_class(kwargs.pop("type"))(**kwargs, parent=None)  # as MultiTower's
        self.tower_name = param_name(self.modality)
        self.width = self.tower.sizes()["width"]
        self.head = DistillHead(
            self.cfg["head_hidden"], self.cfg["head_bottleneck"], self.cfg["prototypes"]
        )
        self.start_step = round(self.cfg["start"] * total_steps)
        self.local = self.cfg["local_weight"] > 0
        self.masked = self.cfg["masked_weight"] > 0
        self.local_key = f"{self.modality}_local"

    # ----- state ---------------------------------------------------------------------
    def init_params(self, rng: jax.Array, embed_dim: int) -> dict[str, Any]:
        """The student's extra params: the head (input ``embed_dim``) and, with masked
        prediction, the mask token [width]."""
        head_rng, token_rng = jax.random.split(rng)
        out = {"head": self.head.init(head_rng, jnp.zeros((1, embed_dim)))["params"]}
        if self.masked:
            out["mask_token"] = 0.02 * jax.random.normal(token_rng, (self.width,), jnp.float32)
        return out

    def student_subset(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The part of the student's params the teacher mirrors."""
        return {self.tower_name: params[self.tower_name], PARAMS: params[PARAMS]}

    def init_teacher(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The teacher at step 0: a copy of the student's tower and head, zero centers."""
        k = self.cfg["prototypes"]
        teacher = {
            "params": jax.tree.map(jnp.copy, self.student_subset(params)),
            "center": jnp.zeros((k,), jnp.float32),
        }
        if self.masked:
            teacher["center_patch"] = jnp.zeros((k,), jnp.float32)
        return teacher

    def is_on(self, step: jax.Array) -> jax.Array:
        """bool scalar: whether the terms are on at (0-based) ``step``."""
        return step >= self.start_step

    # ----- forward passes ------------------------------------------------------------
    def _tower(self, tower_params, image, **kwargs):
        return self.tower.apply({"params": tower_params}, image, **kwargs)

    def _project_tokens(self, tokens: jax.Array, tower_params: Mapping[str, Any]) -> jax.Array:
        """Patch tokens [b, L, width] -> the embedding space [b, L, embed_dim] through the
        tower's own ``head`` projection (identity for a tower without one), so one
        distillation head serves pooled embeddings and patches alike."""
        tokens = tokens.astype(jnp.float32)
        if "head" not in tower_params:
            return tokens
        return tokens @ tower_params["head"]["kernel"] + tower_params["head"]["bias"]

    def _teacher(self, teacher_params, image):
        """Teacher on the global view (no dropout): logits [B, K] and [B, L, K] (or None)."""
        tower_p, head_p = teacher_params[self.tower_name], teacher_params[PARAMS]["head"]
        if self.masked:
            z, tokens = self._tower(tower_p, image, return_tokens=True)
            patches = self.head.apply({"params": head_p}, self._project_tokens(tokens, tower_p))
        else:
            z, patches = self._tower(tower_p, image), None
        return self.head.apply({"params": head_p}, z), patches

    def losses(
        self,
        student: Mapping[str, Any],
        teacher: Mapping[str, Any],
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
        """``(weighted sum, (unweighted losses, new centers))``.

        student: the student's params (tower, ``distill``); teacher: ``state.teacher``
        (its params and centers get no gradient: ``stop_gradient``); batch:
        ``<modality>`` f32 [B, S, S, C] and, with local crops, ``<modality>_local``
        [B, n, h, h, C], sharded on the batch axes; rng: for dropout and the masks."""
        cfg = self.cfg
        teacher = jax.lax.stop_gradient(teacher)
        image = batch[self.modality]
        t_global, t_patches = self._teacher(teacher["params"], image)
        tower_p, own = student[self.tower_name], student[PARAMS]
        mask_rng, local_rng, masked_rng = jax.random.split(rng, 3)
        taus = (cfg["teacher_temp"], cfg["student_temp"])
        losses, centers, total = {}, {}, 0.0
        if self.local:
            crops = batch[self.local_key]
            b, n = crops.shape[:2]
            z = self._tower(
                tower_p, crops.reshape(b * n, *crops.shape[2:]), train=True,
                rngs={"dropout": local_rng},
            )
            s_local = self.head.apply({"params": own["head"]}, z).reshape(b, n, -1)
            losses["local_global"] = dl.local_global_loss(
                s_local, t_global, teacher["center"], *taus
            )
            total = total + cfg["local_weight"] * losses["local_global"]
        centers["center"] = dl.update_center(teacher["center"], t_global, cfg["center_momentum"])
        if self.masked:
            b, length = t_patches.shape[:2]
            mask = dl.random_patch_mask(mask_rng, b, length, cfg["mask_ratio"])
            _, tokens = self._tower(
                tower_p, image, train=True, patch_mask=mask, mask_token=own["mask_token"],
                return_tokens=True, rngs={"dropout": masked_rng},
            )
            s_patches = self.head.apply(
                {"params": own["head"]}, self._project_tokens(tokens, tower_p)
            )
            losses["masked"] = dl.masked_patch_loss(
                s_patches, t_patches, mask, teacher["center_patch"], *taus
            )
            total = total + cfg["masked_weight"] * losses["masked"]
            centers["center_patch"] = dl.update_center(
                teacher["center_patch"], t_patches, cfg["center_momentum"]
            )
        return total, (losses, centers)

    # ----- inside the train step -----------------------------------------------------
    def term(
        self,
        trainable: dict[str, Any],
        frozen: dict[str, Any],
        teacher: Mapping[str, Any],
        batch: Mapping[str, jax.Array],
        step: jax.Array,
        step_rng: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array], Any, dict[str, Any]]:
        """``(weighted loss, metrics, grads, teacher used this step)``.

        ``trainable`` / ``frozen``: the student's params as the step splits them (only
        ``trainable`` is differentiated; the grads have its structure). The teacher used
        is the student's copy at the start step, else ``teacher``; its ``center*``
        come back updated when on. Off (``step < start_step``): loss 0, zero grads,
        nothing computed (``lax.cond``)."""
        on = self.is_on(step)
        first = step == self.start_step
        teacher = dict(teacher)
        teacher["params"] = jax.tree.map(
            lambda s, t: jnp.where(first, s, t),
            self.student_subset(merge_params(trainable, frozen)),
            teacher["params"],
        )
        rng = jax.random.fold_in(step_rng, _MASK_SALT)

        def active(trainable):
            def loss_fn(p):
                return self.losses(merge_params(p, frozen), teacher, batch, rng)

            (loss, (losses, centers)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                trainable
            )
            return loss, losses, centers, grads

        def inactive(trainable):
            zero = jnp.zeros((), jnp.float32)
            losses = {k: zero for k in self.metric_names()}
            centers = {k: v for k, v in teacher.items() if k != "params"}
            return zero, losses, centers, jax.tree.map(jnp.zeros_like, trainable)

        loss, losses, centers, grads = jax.lax.cond(on, active, inactive, trainable)
        teacher.update(centers)
        metrics = {f"train/loss/{k}": v for k, v in losses.items()}
        return loss, metrics, grads, teacher

    def metric_names(self) -> tuple[str, ...]:
        return (("local_global",) if self.local else ()) + (("masked",) if self.masked else ())

    def gate_updates(self, updates: dict[str, Any], step: jax.Array) -> dict[str, Any]:
        """Zeroes the optimizer's updates of the head and mask token before the start."""
        if PARAMS not in updates:  # frozen by config.optim.freeze
            return updates
        on = self.is_on(step)
        updates = dict(updates)
        updates[PARAMS] = jax.tree.map(lambda u: jnp.where(on, u, 0), updates[PARAMS])
        return updates

    def next_teacher(
        self, teacher: Mapping[str, Any], new_params: Mapping[str, Any], step: jax.Array
    ) -> dict[str, Any]:
        """After the optimizer step: ``teacher <- ema * teacher + (1 - ema) * student``
        when on (``teacher`` as returned by :meth:`term`), else unchanged."""
        on = self.is_on(step)
        moved = dl.ema(teacher["params"], self.student_subset(new_params), self.cfg["ema"])
        out = dict(teacher)
        out["params"] = jax.tree.map(lambda m, t: jnp.where(on, m, t), moved, teacher["params"])
        return out
