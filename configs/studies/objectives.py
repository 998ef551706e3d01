"""Study: every multimodal objective on the same towers, data, batch, steps and learning
rate, on 3 modalities (image, text, audio) or 4 (+ depth) of ``generated:shapes``, 3 seeds,
plus an untrained baseline per seed (issue 15; table and plot:
``experiments/multimodal_objectives.py``, which runs both datasets).

    python -m multimodal_ssl.sweep --config=configs/studies/objectives.py:3mod \
        --workdir=/tmp/objectives/3mod --parallel=2
    python -m multimodal_ssl.sweep --config=configs/studies/objectives.py:4mod \
        --workdir=/tmp/objectives/4mod --parallel=2

``:ARG`` is ``3mod`` or ``4mod``, optionally ``,tiny`` (seconds per run, one seed, two
objectives and the baseline: the smoke test). Runs are named ``seed=<s>,loss=<objective>``:

- ``sigmoid_all`` / ``softmax_all``: SigLIP / CLIP pairwise losses over every modality pair;
- ``sigmoid_anchor``: SigLIP against the image only (ImageBind);
- ``dcl``: decoupled contrastive (CLIP without the positive in the denominator), all pairs;
- ``symile``: Symile with O(n^2) negatives (``negatives="n_squared"``: every combination
  of the other modalities' rows; B^(M-1) candidates per anchor row);
- ``gram``: GRAM, text the anchor;
- ``decur``: DeCUR's cross-modal term for each pair with the image (a mixture of one DeCUR
  term per pair; no intra-modal views);
- ``slip``: the sigmoid loss over all pairs + SimCLR on two augmented image views (the
  only objective with augmentation: mild random shifts of the image, which SimCLR needs);
- ``matryoshka``: the sigmoid loss over all pairs at the nested prefixes 16/32/64;
- ``untrained``: the same model trained for 1 step at learning rate 0 (the warmup starts
  at 0), so its step-1 evals are those of the initial params. Towers are initialised
  from ``config.seed`` alone, so one baseline per seed serves every objective (the
  objectives' own scalars and heads play no part in the evals).

Each objective keeps its recipe's initial temperature (and SigLIP's bias -10); everything
else (towers, batch, steps, Muon lr 2e-3, warmup, data) is shared.

Every run evaluates once, at its last step: retrieval R@1/5/10 between every pair of
modalities (a match is correct when it has the query's caption), zero-shot from every
non-text modality (24 shape+colour classes; depth: 4 shapes, it has no colour), and the
``fused`` eval: zero-shot and retrieval from all non-text modalities at once and with each
one missing (``multimodal_ssl/evals/fused.py``; rules ``sum``, ``mip``, ``volume``).
"""

import itertools
import math
import os

import ml_collections

from multimodal_ssl.config import set_towers
from multimodal_ssl.losses.mixture import mix_config, mix_term
from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import load_recipe

DATASETS = {"3mod": ("image", "text", "audio"), "4mod": ("image", "text", "audio", "depth")}
SEEDS = (0, 1, 2)
# Size: the 60 runs of both datasets were estimated (2026-12-01, from runs of this size on
# the 2-core CPU machine) at 20-27 min with --parallel=2, to fit 35 minutes. Batch 32 keeps
# Symile's O(n^2) form cheap with 4 modalities (B^4 scores per step).
STEPS = 300
BATCH = 32
IMAGE_SIZE = 32
WIDTH = 64
EMBED_DIM = 64
MATRYOSHKA_DIMS = (16, 32, 64)
EVAL_EXAMPLES = 1024
SAMPLE_RATE = 8000
AUDIO_PP = f"resample({SAMPLE_RATE})|crop(1.0)|log_mel(32, 32, 32)"  # 32 frames x 32 mels
NO_AUGMENTATION = "resize_small|center_crop|value_range(-1, 1)"


def _parse(arg: str | None) -> tuple[str, bool]:
    parts = [p for p in (arg or "").split(",") if p]
    datasets = [p for p in parts if p in DATASETS]
    unknown = [p for p in parts if p not in DATASETS and p != "tiny"]
    if len(datasets) != 1 or unknown:
        raise ValueError(
            f"configs/studies/objectives.py: ARG {arg!r}; expected one of {sorted(DATASETS)}, "
            f"optionally with ',tiny' (e.g. '3mod,tiny')"
        )
    return datasets[0], "tiny" in parts


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset, tiny = _parse(arg)
    modalities = DATASETS[dataset]
    config = load_recipe(
        os.path.join(os.path.dirname(__file__), "..", "imagebind.py"), "tiny" if tiny else None
    )
    evals = config.evals
    if not tiny:
        config.total_steps = STEPS
        config.batch_size = BATCH
        config.data.image_size = IMAGE_SIZE
        config.data.pp.audio = AUDIO_PP
        encoder = {"width": WIDTH, "mlp_dim": 4 * WIDTH, "num_heads": 2, "depth": 1}
        set_towers(
            config,
            {
                "image": {"type": "vit", "variant": "mu/8", "pool": "gap", **encoder, "depth": 2},
                "text": {"type": "text", "variant": "mu", "pool": "mean", **encoder},
                "audio": {"type": "audio", "variant": "mu", "patch_size": 8, "pool": "gap",
                          **encoder},
                "depth": {"type": "vit", "variant": "mu/8", "pool": "gap", **encoder},
            },
        )
        config.model.embed_dim = EMBED_DIM
        config.optim.warmup_steps = round(0.075 * STEPS)
        config.log_every_steps = 25
    set_towers(config, {m: config.model.towers[m].to_dict() for m in modalities})
    config.data.pp = {k: v for k, v in config.data.pp.items() if k in modalities}
    config.data.pp_train = NO_AUGMENTATION
    config.checkpoint.every_steps = max(1, config.total_steps // 2)  # resume mid-run
    config.checkpoint.keep = 1
    config.evals = ml_collections.ConfigDict()
    for name, e in evals.items():  # the imagebind recipe's, for these modalities
        if {e.get("query"), e.get("candidates", "text")} <= set(modalities):
            config.evals[name] = e
    queries = [m for m in ("image", "audio", "depth") if m in modalities]
    config.evals.fused = {
        "type": "fused",
        "data": "generated:shapes:test",
        "queries": ",".join(queries),
        "candidates": "text",
        "scores": "sum,mip,volume",
        "every_steps": config.total_steps,
        "max_examples": 64 if tiny else EVAL_EXAMPLES,
    }
    for e in config.evals.values():
        e.every_steps = config.total_steps  # once, at the end
        e.max_examples = 64 if tiny else EVAL_EXAMPLES
    config.loss = objective_config("sigmoid", pairs=all_pairs(modalities))
    return config


def all_pairs(modalities) -> str:
    """Every pair of the towers, spelled out (``"all"`` would also pair data.views inputs)."""
    return ",".join(f"{a}-{b}" for a, b in itertools.combinations(sorted(modalities), 2))


def objectives(config: ml_collections.ConfigDict) -> dict[str, dict]:
    """``{label: {"loss": config.loss, "views": data.views, "pp_train": ...}}``."""
    modalities = list(config.model.towers)
    pairs = all_pairs(modalities)
    clip_t = math.log(1 / 0.07)
    sigmoid = objective_config("sigmoid", impl="global", pairs=pairs)
    size = config.data.image_size
    shifts = f"resize({size + size // 8})|random_crop|value_range(-1, 1)"
    dim = config.model.embed_dim
    matryoshka = objective_config(
        "matryoshka", dims=tuple(d * dim // MATRYOSHKA_DIMS[-1] for d in MATRYOSHKA_DIMS)
    )
    matryoshka.objective = sigmoid
    decur_terms = {
        f"{a}_{b}": mix_term("decur", pairs=f"{a}-{b}", views="")
        for a, b in itertools.combinations(sorted(modalities), 2)
        if "image" in (a, b)
    }
    out = {
        "sigmoid_all": objective_config("sigmoid", impl="global", pairs=pairs),
        "softmax_all": objective_config("softmax", impl="global", pairs=pairs, t_init=clip_t),
        "sigmoid_anchor": objective_config("sigmoid", impl="global", pairs="anchor:image"),
        "dcl": objective_config("dcl", impl="global", pairs=pairs, t_init=clip_t),
        "symile": objective_config("symile", negatives="n_squared", t_init=math.log(30.0)),
        "gram": objective_config("gram", anchor="text"),
        "decur": mix_config(**decur_terms),
        "slip": mix_config(
            siglip=mix_term("sigmoid", impl="global", pairs=pairs),
            simclr=mix_term(
                "simclr", views="image-image_view2", mlp_dim=4 * dim, out_dim=dim
            ),
        ),
        "matryoshka": matryoshka,
    }
    runs = {
        label: {"loss": loss.to_dict(), "views": {}, "pp_train": NO_AUGMENTATION}
        for label, loss in out.items()
    }
    runs["slip"].update(views={"image_view2": "image"}, pp_train=shifts)
    return runs


def get_hyper(h, arg: str | None = None):
    config = get_config(arg)
    _, tiny = _parse(arg)
    runs = objectives(config)
    if tiny:
        runs = {k: runs[k] for k in ("sigmoid_all", "symile")}
    runs["untrained"] = dict(runs["sigmoid_all"], steps=1)
    labels = list(runs)
    steps = [r.get("steps", config.total_steps) for r in runs.values()]
    # Seeds vary slowest: every objective's first run compiles its step, the later seeds'
    # load it from JAX's compilation cache (the experiment script sets one; ~20 s less each).
    return h.product([
        h.sweep("config.seed", [0] if tiny else list(SEEDS)),
        h.zipit([
            h.sweep("config.loss", {k: runs[k]["loss"] for k in labels}),
            h.sweep("config.data.views", [runs[k]["views"] for k in labels]),
            h.sweep("config.data.pp_train", [runs[k]["pp_train"] for k in labels]),
            h.sweep("config.total_steps", steps),
            h.sweep("config.optim.warmup_steps",
                    [config.optim.warmup_steps if s > 1 else 1 for s in steps]),
        ]),
    ])
