"""SigLIP 2's LocCa decoder as an extra term of the train step, and greedy decoding.

A text decoder (``models/text_decoder.py``) cross-attends to the image tower's un-pooled
patch tokens and learns captioning, referring expressions (name -> box) and grounded
captioning (box -> name) by teacher forcing (``data/locca_tasks.py`` builds the rows).
The image tower runs once per step: the step's forward pass returns the tokens next to
the pooled embeddings, and the decoder's loss joins the objective's (so GradCache and
the ring losses are unchanged). Parallel prediction (CapPa): a fraction of the rows see
MASK tokens instead of their target inputs and attend bidirectionally.

``config.decoder`` (:func:`default_config`; off while ``weight`` is 0):

* ``weight``: the decoder loss's weight in ``train/loss`` (SigLIP 2 / LocCa: 1);
* ``modality``: the ViT tower read; ``field``: the record field with the caption and
  boxes (``locca`` on ``generated:shapes``; CSV / WebDataset / TFDS: a JSON field);
* ``tasks``: sampling weight per task (0 drops one); ``parallel_fraction``: rows trained
  with parallel prediction; ``box_bins``: coordinate levels of a box; ``max_len``: tokens
  per row (BOS + prefix + target);
* ``width``, ``depth``, ``num_heads``, ``mlp_dim``, ``dropout``: the decoder.

Params: ``params["decoder"]`` (trained with the rest). Metrics: ``train/loss/locca`` and
``train/loss/locca_<task>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from multimodal_ssl.data import locca_tasks, rows
from multimodal_ssl.data.tokenizers import Tokenizer
from multimodal_ssl.losses.captioning import captioning_loss
from multimodal_ssl.models.text_decoder import TextDecoder
from multimodal_ssl.models.towers import MultiTower, param_name, tower_class

PARAMS = "decoder"  # top-level key of the decoder's params
TOKENS = "tokens/"  # prefix of the patch-token entries the step's forward pass returns
# Ops that move pixels: boxes would no longer match the image.
_GEOMETRIC_OPS = ("random_resized_crop", "random_crop", "flip_lr", "inception_crop")


def default_config() -> ml_collections.ConfigDict:
    """Every key of ``config.decoder`` with its default (off)."""
    return ml_collections.ConfigDict(
        {
            "weight": 0.0,
            "modality": "image",
            "field": "locca",
            "tasks": {"caption": 1.0, "referring": 1.0, "grounded": 1.0},
            "parallel_fraction": 0.0,
            "box_bins": 32,
            "max_len": 64,
            "width": 128,
            "depth": 2,
            "num_heads": 4,
            "mlp_dim": 512,
            "dropout": 0.0,
        }
    )


def enabled(config: Any) -> bool:
    """Whether ``config.decoder`` switches the decoder on."""
    d = config.get("decoder") if hasattr(config, "get") else None
    return d is not None and d.weight > 0


def validate(config: ml_collections.ConfigDict) -> None:
    """ValueError naming ``config.decoder.<key>`` for bad values (when enabled)."""
    d = config.decoder

    def fail(key, message):
        raise ValueError(f"config.decoder.{key}: {message}")

    if not d.weight >= 0:
        fail("weight", f"must be >= 0 (0: off), got {d.weight!r}")
    if not enabled(config):
        return
    tower = config.model.towers.get(d.modality)
    if tower is None or tower["type"] != "vit":
        fail("modality", f"{d.modality!r} must name a 'vit' tower of config.model.towers")
    if PARAMS in config.model.towers:
        fail("modality", f"a tower named {PARAMS!r} collides with the decoder's params")
    if tower.get("token_drop", 0):
        fail("modality", f"needs config.model.towers.{d.modality}.token_drop = 0")
    unknown = set(d.tasks) - set(locca_tasks.TASKS)
    if unknown:
        fail("tasks", f"unknown {sorted(unknown)}; known: {list(locca_tasks.TASKS)}")
    weights = [float(w) for w in d.tasks.values()]
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        fail("tasks", f"weights must be >= 0 with a positive sum, got {dict(d.tasks)}")
    if not 0 <= d.parallel_fraction <= 1:
        fail("parallel_fraction", f"must be in [0, 1], got {d.parallel_fraction!r}")
    for key, low in (("box_bins", 2), ("max_len", 4), ("width", 1), ("depth", 1),
                     ("num_heads", 1), ("mlp_dim", 1)):
        if not (isinstance(d[key], int) and d[key] >= low):
            fail(key, f"must be an int >= {low}, got {d[key]!r}")
    if d.width % d.num_heads:
        fail("num_heads", f"{d.num_heads} does not divide width {d.width}")
    boxes = any(d.tasks.get(t, 0) > 0 for t in locca_tasks.BOX_TASKS)
    moving = [op for op in _GEOMETRIC_OPS if op in config.data.pp_train]
    if boxes and moving:
        fail(
            "tasks",
            f"box tasks need boxes that match the image, but config.data.pp_train has "
            f"{moving}: drop those ops or set decoder.tasks.referring = grounded = 0",
        )


def make_processor(cfg: Mapping[str, Any], tokenizer: Tokenizer) -> locca_tasks.LoccaProcessor:
    """The training pipeline's reader of ``config.decoder.field`` (batch ``locca/*``)."""
    return locca_tasks.LoccaProcessor(
        tokenizer,
        field=cfg["field"],
        max_len=cfg["max_len"],
        task_weights=dict(cfg["tasks"]),
        parallel_fraction=cfg["parallel_fraction"],
        box_bins=cfg["box_bins"],
    )


class LocCa:
    """The decoder term for ``model``'s tower ``cfg["modality"]`` (``cfg``: the resolved
    ``config.decoder``; ``vocab_size``: the tokenizer's)."""

    def __init__(self, cfg: Mapping[str, Any], model: MultiTower, vocab_size: int):
        self.cfg = dict(cfg)
        self.modality = self.cfg["modality"]
        kwargs = {"num_classes": model.embed_dim, "dtype": model.dtype}
        kwargs.update(model.towers[self.modality])
        self.tower = tower_class(kwargs.pop("type"))(**kwargs, parent=None)  # as MultiTower's
        self.tower_name = param_name(self.modality)
        self.memory_width = self.tower.sizes()["width"]
        self.vocab_size = vocab_size
        self.special = locca_tasks.special_ids(vocab_size)
        self.decoder = TextDecoder(
            vocab_size=locca_tasks.decoder_vocab_size(vocab_size),
            width=self.cfg["width"],
            depth=self.cfg["depth"],
            num_heads=self.cfg["num_heads"],
            mlp_dim=self.cfg["mlp_dim"],
            max_len=self.cfg["max_len"],
            dropout=self.cfg["dropout"],
            dtype=model.dtype,
        )
        self.batch_keys = tuple(f"locca/{k}" for k in locca_tasks.KEYS)

    def init_params(self, rng: jax.Array) -> dict[str, Any]:
        t = self.cfg["max_len"]
        return self.decoder.init(
            rng,
            jnp.zeros((1, t), jnp.int32),
            jnp.zeros((1, 1, self.memory_width)),
            jnp.ones((1, t), bool),
            jnp.zeros((1,), bool),
        )["params"]

    def loss(
        self,
        params: Mapping[str, Any],
        tokens: jax.Array,
        batch: Mapping[str, jax.Array],
        rng: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(weighted loss, metrics ``train/loss/locca*``). tokens: the tower's patch tokens
        [B, L, width]; batch: ``locca/*`` [B, ...], batch-sharded like ``tokens``."""
        parallel = batch["locca/parallel"]
        valid = batch["locca/valid"]
        target = batch["locca/weights"] > 0
        # Parallel prediction: the target positions' inputs (after the first) are MASK.
        masked = parallel[:, None] & target & ~_first_true(target)
        inputs = jnp.where(masked, self.special["mask"], batch["locca/inputs"])
        logits = self.decoder.apply(
            {"params": params[PARAMS]}, inputs, tokens, valid, parallel,
            train=True, rngs={"dropout": rng},
        )
        loss, per_task = captioning_loss(
            logits, batch["locca/labels"], batch["locca/weights"], batch["locca/task"],
            locca_tasks.TASKS,
        )
        metrics = {"train/loss/locca": loss}
        metrics.update({f"train/loss/locca_{k}": v for k, v in per_task.items()
                        if self.cfg["tasks"].get(k, 0) > 0})
        return self.cfg["weight"] * loss, metrics

    def greedy(self, params: Mapping[str, Any], image: jax.Array, heads: jax.Array,
               head_len: jax.Array, steps: int) -> jax.Array:
        """Greedy decoding (jit-able). image [b, S, S, C]; heads i32 [b, T]: BOS + prefix
        ids, then anything; head_len i32 [b] -> the ``steps`` ids after each head [b, steps]
        (EOS marks the end)."""
        tower_params = {"params": params[self.tower_name]}
        _, tokens = self.tower.apply(tower_params, image, return_tokens=True)
        b, t = heads.shape
        positions = jnp.arange(t)[None]

        def body(j, ids):
            valid = positions < (head_len + j)[:, None]
            logits = self.decoder.apply(
                {"params": params[PARAMS]}, ids, tokens, valid, jnp.zeros((b,), bool)
            )
            at = jnp.minimum(head_len + j - 1, t - 1)
            nxt = jnp.argmax(jnp.take_along_axis(logits, at[:, None, None], 1)[:, 0], -1)
            write = (head_len + j < t)[:, None] & (positions == (head_len + j)[:, None])
            return jnp.where(write, nxt[:, None].astype(ids.dtype), ids)

        ids = jax.lax.fori_loop(0, steps, body, jnp.where(positions < head_len[:, None], heads, 0))
        cols = jnp.minimum(head_len[:, None] + jnp.arange(steps)[None], t - 1)
        return jnp.take_along_axis(ids, cols, axis=1)


def _first_true(x: jax.Array) -> jax.Array:
    """bool [b, T] -> True only at each row's first True."""
    return x & (jnp.cumsum(x, axis=1) == 1)


class Captioner:
    """``captioner(images [n, S, S, C], prefixes: n str, max_new) -> n decoded targets``:
    greedy decoding with the embedder's current params (what the ``locca`` eval calls).
    Images are padded to the embedder's batch shards; one compilation per (n, max_new)."""

    def __init__(self, locca: LocCa, embedder: Any, tokenizer: Tokenizer):
        self.locca, self.embedder, self.tokenizer = locca, embedder, tokenizer
        self.box_bins = locca.cfg["box_bins"]
        self._fn = jax.jit(locca.greedy, static_argnames="steps")

    def __call__(self, images: np.ndarray, prefixes: Sequence[str], max_new: int) -> list[str]:
        from multimodal_ssl.sharding import batch_sharding  # local: light import for evals

        n, t = len(images), self.locca.cfg["max_len"]
        padded = self.embedder.padded_size(n)
        heads = np.zeros((padded, t), np.int32)
        head_len = np.ones(padded, np.int32)
        heads[:, 0] = self.locca.special["bos"]
        for i, prefix in enumerate(prefixes):
            row = locca_tasks.decoder_row(self.tokenizer, prefix, "", t, "locca eval")
            heads[i], head_len[i] = row["inputs"], row["prefix_len"]
        images = rows.pad(np.asarray(images), padded)
        put = jax.device_put((images, heads, head_len), batch_sharding(self.embedder.mesh))
        ids = np.asarray(self._fn(self.embedder.params, *put, steps=max_new))[:n]
        out = []
        for row in ids:
            end = np.flatnonzero(row == self.locca.special["eos"])
            row = row[: end[0]] if len(end) else row
            row = row[(row > 0) & (row < self.tokenizer.vocab_size)]
            out.append(self.tokenizer.decode(row)[0] if len(row) else "")
        return out
