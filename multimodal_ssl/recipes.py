"""Building blocks shared by the recipe files in ``configs/``.

They live in the package (not in ``configs/``) so a recipe file loaded by path
can import them without touching ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from multimodal_ssl.config import set_towers


def shapes_evals(every_steps: int, max_examples: int = 1024) -> ml_collections.ConfigDict:
    """Zero-shot over shape+colour classes and image<->text retrieval on the held-out
    ``generated:shapes:test`` scenes (never seen in training)."""
    return ml_collections.ConfigDict(
        {
            "zeroshot": {
                "type": "zeroshot",
                "data": "generated:shapes:test",
                "every_steps": every_steps,
                "max_examples": max_examples,
                # Present so the command line can set them for other data (csv:, tfds:, ...).
                "label_key": ml_collections.config_dict.placeholder(str),
                "classnames": ml_collections.config_dict.placeholder(object),  # path or list
                "dims": ml_collections.config_dict.placeholder(tuple),  # prefix evals
            },
            "retrieval": {
                "type": "retrieval",
                "data": "generated:shapes:test",
                "every_steps": every_steps,
                "max_examples": max_examples,
                "dims": ml_collections.config_dict.placeholder(tuple),
            },
        }
    )


def shapes_probe_evals(
    every_steps: int, max_examples: int = 1024, max_train_examples: int = 4096
) -> ml_collections.ConfigDict:
    """Representation evals on ``generated:shapes``: geometry of the held-out pairs,
    and k-NN and a linear probe (shape+colour classes) fit on ``max_train_examples``
    training scenes, scored on the held-out ones."""
    test = {
        "data": "generated:shapes:test",
        "every_steps": every_steps,
        "max_examples": max_examples,
    }
    train = {"train_data": "generated:shapes:train", "max_train_examples": max_train_examples}
    return ml_collections.ConfigDict(
        {
            "geometry": {"type": "geometry", **test},
            "knn": {"type": "knn", **test, **train},
            "linear_probe": {"type": "linear_probe", **test, **train},
        }
    )


def shapes_dense_evals(
    every_steps: int,
    max_examples: int = 512,
    max_train_examples: int = 512,
    classes: str = "shape_color",
) -> ml_collections.ConfigDict:
    """``dense_probe``: a linear probe on the image tower's patch tokens predicting each
    patch's object class (background + ``classes``), fit on ``max_train_examples``
    training scenes, scored (mIoU, pixel accuracy) on ``max_examples`` held-out ones.
    Add to a recipe with ``config.evals.update(shapes_dense_evals(...))``."""
    return ml_collections.ConfigDict(
        {
            "dense_probe": {
                "type": "dense_probe",
                "data": "generated:shapes:test",
                "every_steps": every_steps,
                "max_examples": max_examples,
                "train_data": "generated:shapes:train",
                "max_train_examples": max_train_examples,
                "classes": classes,
            }
        }
    )


def benchmark_evals(
    suite: str = "standard",
    *,
    every_steps: int = 10_000,
    prompts: str = "clip",
    max_examples: int | None = None,
    batch_size: int = 256,
) -> ml_collections.ConfigDict:
    """``config.evals`` entries for the benchmarks of ``suite`` (a name of
    ``evals.benchmarks.SUITES``: "standard", "zeroshot", "imagenet", "retrieval", or
    comma-separated benchmark names), one per benchmark under its name, reading the
    prepared TFDS datasets in ``data.tfds_dir``. ``prompts``: "clip" or "siglip" (the
    zero-shot protocol). Add to a recipe with ``config.evals.update(benchmark_evals())``."""
    from multimodal_ssl.evals import benchmarks  # local: recipes stay light to import

    benchmarks.check_prompts(prompts)
    evals = {}
    for b in benchmarks.suite(suite):
        evals[b.name] = {
            "type": b.type,
            "data": b.data,
            "benchmark": b.name,
            "every_steps": every_steps,
            "max_examples": ml_collections.config_dict.placeholder(int),
            "batch_size": batch_size,
            **({"prompts": prompts} if b.type == "zeroshot" else {}),
        }
        evals[b.name]["max_examples"] = max_examples
    return ml_collections.ConfigDict(evals)


def use_muon(config: ml_collections.ConfigDict) -> None:
    """The optimizer of the generated-data recipes: Muon on the weight matrices, AdamW on
    the rest (lr 2e-3, 30 warmup steps, cosine, weight decay 1e-4, clipping 1.0). It learns
    the shape attribute ~3x faster than AdamW (experiments/shape_learning.md)."""
    config.optim.name = "muon"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 30
    config.optim.weight_decay = 1e-4
    config.optim.grad_clip = 1.0


def apply_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a recipe to seconds on CPU, for tests and smoke runs."""
    config.total_steps = 6
    config.batch_size = 16
    config.log_every_steps = 1
    config.data.image_size = 16
    config.data.max_text_len = 16
    tiny = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
    kinds = {"vit": {"variant": "mu/8"}, "text": {"variant": "mu"}, "audio": {"patch_size": 4}}
    set_towers(
        config,
        {
            m: {"type": t["type"], **kinds.get(t["type"], {}), **tiny}
            for m, t in config.model.towers.items()
        },
    )
    config.model.embed_dim = 16
    config.optim.warmup_steps = 2
    config.checkpoint.every_steps = 3
    config.evals = shapes_evals(every_steps=1000, max_examples=64)
    return config


def split_variant(arg: str | None, flag: str) -> tuple[str | None, bool]:
    """``"tiny,naflex"`` -> ``("tiny", True)``: a recipe's variant without the
    comma-separated switch ``flag``, and whether it was there."""
    parts = [p for p in (arg or "").split(",") if p]
    rest = ",".join(p for p in parts if p != flag)
    return rest or None, flag in parts


def use_naflex(config: ml_collections.ConfigDict, max_patches: int | None = None) -> None:
    """NaFlex training of the image tower (SigLIP 2; ``data/naflex_pp.py``): images keep
    their aspect ratio, resized to ``max_patches`` patches (default: the patch count of
    the fixed ``data.image_size``), as fixed-shape padded patch sequences (one compile);
    random aspect-ratio crops in training (square ``generated:shapes`` scenes become 1:2
    to 2:1), the whole image in evals. A learned position grid (resized per image); the
    self-distillation terms are off (they take fixed-size images; SigLIP 2 trains its
    NaFlex variant without them too)."""
    from multimodal_ssl.models.towers import tower_class  # local: recipes stay light

    tower = config.model.towers.image
    patch = tower_class("vit")(**{k: v for k, v in tower.items() if k != "type"}).sizes()
    side = config.data.image_size // patch["patch_size"][0]
    tower.naflex_max_patches = max_patches or side * side
    tower.posemb = "learn"
    config.data.pp_train = "random_aspect_crop(0.5, 2.0)|value_range(-1, 1)"
    config.data.pp_eval = "value_range(-1, 1)"
    if "distill" in config:
        config.distill.local_weight = config.distill.masked_weight = 0.0


def load_recipe(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the recipe file at ``path`` (as ``--config=path:arg`` does);
    lets one recipe extend another (``configs/clip.py`` extends ``configs/siglip.py``)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"multimodal_ssl_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
