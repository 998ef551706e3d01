"""SigLIP at paper scale (Zhai et al. 2023, arXiv 2303.15343): the B/16, L/16 and So400m/14
recipes behind ``configs/siglip.py:B16``, ``:L16_384``, ``:So400m14_224``, ...

A variant is ``MODEL`` or ``MODEL_RES`` with ``MODEL`` in :data:`MODELS` and ``RES`` in
:data:`RESOLUTIONS` (``MODEL`` alone: the model's first released resolution). What the
recipe takes from where:

- Towers, as the released SigLIP checkpoints (big_vision ``SigLIP_demo.ipynb``): image ViT
  with MAP pooling and no head (its width is the embedding size), text transformer of the
  same size pooling the last token, with a head to that size; text length 64 (16 for
  So400m/14 at 224); a 32k SentencePiece vocabulary (big_vision's ``c4_en``).
- Images: ``resize(RES)|value_range(-1, 1)``, no augmentation (the released models'
  preprocessing in big_vision's SigLIP colab). A /14 patch does not divide 256 or 384:
  big_vision's VALID patch convolution ignores the last pixels of each row and column;
  here the image is resized to RES and centre-cropped to the largest multiple of 14
  (252, 378): the released checkpoints' patch grids (18x18, 27x27) and position tables.
- Loss: sigmoid, ``t = log 10``, ``b = -10`` (the paper's initialisation), ring
  implementation.
- Optimization: batch 32k (32768, the paper's recommended size); Adam with
  ``b2 = 0.95`` (the paper's fix for large-batch instabilities), learning rate 1e-3,
  decoupled weight decay 1e-4, gradient clipping at norm 1, cosine decay after 20k
  warmup steps, 40B examples (the schedule SigLIP 2, arXiv 2502.14786, reports for its
  SigLIP base recipe; SigLIP's own runs vary in length: set ``total_steps``).
  big_vision applies weight decay as ``wd * schedule``, not scaled by the learning
  rate; optax's ``adamw`` scales it by the learning rate, so its ``weight_decay`` is
  ``1e-4 / 1e-3 = 0.1`` for the same update.
- Scale: bfloat16 compute (float32 params and optimizer state), ``scan`` over the layers
  (compiled once per tower), ``remat`` per :data:`MODELS`, a mesh of FSDP over every
  device (``mesh.fsdp = -1``, as big_vision shards these sizes; tensor parallelism,
  ``--config.mesh.model=N``, pays only for bigger towers).
- Checkpoints every 5000 steps and every 15 minutes of wall time (preemptible slices
  lose at most 15 minutes), the last 3 kept.

The data and the tokenizer are not in the recipe: ``data.train`` (e.g.
``wds:/data/webli/{00000..09999}.tar``) and ``data.tokenizer``
(``sentencepiece:/path/c4_en.model``) are :func:`config.required` and the run stops at
start naming them until they are set. Per-device memory (compiled on emulated CPU
devices) and the batch that fits each device size: ``experiments/scale_plan.md``.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from multimodal_ssl.config import base_config, required, set_towers
from multimodal_ssl.losses.objectives import objective_config

RESOLUTIONS = (224, 256, 384)
BATCH_SIZE = 32_768
EXAMPLES_SEEN = 40_000_000_000
WARMUP_STEPS = 20_000


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """One SigLIP size. ``vit``/``text``: tower variants (``models.variants.VARIANTS``);
    ``resolutions``: those it is released at (the first is the default); ``text_len``:
    tokens per caption at each resolution; ``remat``: the blocks' rematerialisation
    policy."""

    vit: str
    text: str
    width: int
    resolutions: tuple[int, ...]
    text_len: dict[int, int]
    remat: str

    @property
    def patch(self) -> int:
        return int(self.vit.split("/")[1])


MODELS: dict[str, PaperModel] = {
    "B16": PaperModel(
        vit="B/16", text="B", width=768, resolutions=(224, 256, 384),
        text_len={224: 64, 256: 64, 384: 64}, remat="full",
    ),
    "L16": PaperModel(
        vit="L/16", text="L", width=1024, resolutions=(256, 384),
        text_len={224: 64, 256: 64, 384: 64}, remat="full",
    ),
    "So400m14": PaperModel(
        vit="So400m/14", text="So400m", width=1152, resolutions=(224, 384),
        text_len={224: 16, 256: 64, 384: 64}, remat="full",
    ),
}


def variant_names() -> list[str]:
    """Every accepted variant: ``B16``, ``B16_224``, ``B16_256``, ..."""
    return [n for m in MODELS for n in (m, *(f"{m}_{r}" for r in RESOLUTIONS))]


def parse_variant(arg: str) -> tuple[str, int]:
    """``"L16_384"`` -> ``("L16", 384)``; ``"L16"`` -> ``("L16", 256)`` (first released).
    ValueError listing the valid names otherwise."""
    name, sep, res = arg.partition("_")
    if name not in MODELS or (sep and res not in {str(r) for r in RESOLUTIONS}):
        raise ValueError(
            f"configs/siglip.py: unknown paper-scale variant {arg!r}; known: "
            f"{', '.join(variant_names())}"
        )
    return name, int(res) if res else MODELS[name].resolutions[0]


def image_size(model: str, res: int) -> int:
    """The model's input size at ``res``: the largest multiple of its patch <= ``res``."""
    patch = MODELS[model].patch
    return res - res % patch


def paper_config(arg: str) -> ml_collections.ConfigDict:
    """The full config of variant ``arg`` (see the module docstring)."""
    name, res = parse_variant(arg)
    spec = MODELS[name]
    config = base_config()
    config.seed = 0
    config.batch_size = BATCH_SIZE
    config.total_steps = math.ceil(EXAMPLES_SEEN / BATCH_SIZE)
    config.log_every_steps = 50

    config.data.train = required("wds:/data/webli/{00000..09999}.tar")
    config.data.tokenizer = required("sentencepiece:/data/c4_en.model")
    size = image_size(name, res)
    config.data.image_size = size
    config.data.max_text_len = spec.text_len[res]
    crop = "" if size == res else "|center_crop"
    config.data.pp_train = f"resize({res}){crop}|value_range(-1, 1)"
    config.data.pp_eval = config.data.pp_train
    config.data.worker_count = 16  # JPEG decoding per host: ~300 images/s per process
    config.data.read_threads = 4

    set_towers(
        config,
        {
            "image": {"type": "vit", "variant": spec.vit, "pool": "map", "num_classes": None},
            "text": {"type": "text", "variant": spec.text, "pool": "last"},
        },
    )
    config.model.embed_dim = spec.width
    config.model.dtype = "bfloat16"
    config.model.scan = True
    config.model.remat = spec.remat

    config.loss = objective_config(
        "sigmoid", impl="ring", pairs="image-text", t_init=math.log(10.0), b_init=-10.0
    )

    config.optim.name = "adamw"
    config.optim.lr = 1e-3
    config.optim.b1 = 0.9
    config.optim.b2 = 0.95
    config.optim.weight_decay = 1e-4 / config.optim.lr  # big_vision's wd 1e-4, in optax terms
    config.optim.grad_clip = 1.0
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = WARMUP_STEPS

    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "model": 1})

    config.checkpoint.every_steps = 5000
    config.checkpoint.every_minutes = 15.0
    config.checkpoint.keep = 3
    config.evals = ml_collections.ConfigDict()
    return config
