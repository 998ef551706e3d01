"""Study: the default SigLIP recipe's own choices (Muon vs AdamW, learning rate, steps,
augmentation) on a small *real* image-text set, with zero-shot, retrieval and k-NN curves
(issue 17): does what won on ``generated:shapes`` carry over, and does the recipe overfit
late in training?

    python experiments/digits_data.py --out=/tmp/digits
    python -m multimodal_ssl.sweep --config=configs/studies/siglip_digits.py \\
        --workdir=/tmp/siglip_digits --parallel=2
    python experiments/digits_curves.py --workdir=/tmp/siglip_digits

Data: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 scans of handwritten digits;
scikit-learn is an experiment-only requirement, in the ``[dev]`` extra), written by
``experiments/digits_data.py`` as 32x32 RGB PNGs (nearest-neighbour upscaling) with a
fixed stratified 80/20 split: ``train.csv`` (1,438 rows) and ``test.csv`` (359). **The
captions are templated from the labels** (five phrasings such as "a handwritten digit
seven", "the number 7 written by hand", one per example, seeded), so this tests the image
side and the recipe on real pixels, not real language. The folder is ``$DIGITS_DIR``
(default ``/tmp/digits``); the sweep's runs inherit the variable.

Recipe: configs/siglip.py unchanged (400 steps of batch 128, i.e. ~36 epochs of the
1,438 training pairs, Muon lr 2e-3 with 30 warmup steps and cosine decay, towers width
128, sigmoid loss, no augmentation) except for the data: 32 px images with the recipe's
8-px patches (``mu/8``: 16 tokens, each a 2x2 block of the scan's pixels; the recipe's
64 px would only upsample the 8x8 scans further at 4x the cost) and 32-byte captions
(the longest is 32 bytes). Evals every 40 steps (10 points per curve) on ``test.csv``:

- ``zeroshot``: the 10 class names ``zero`` .. ``nine`` with the three word-form
  training phrasings as templates (``TEMPLATES``), averaged (CLIP's prompt ensemble);
- ``retrieval``: the test captions are all "a handwritten digit <name>", so retrieval is
  class-level: img->txt R@1 is the share of test images whose best of the 10 class
  captions is their own (zero-shot with that single prompt), txt->img R@1 the share of
  the 10 captions whose best test image shows their digit;
- ``knn``: k-NN (k = 1, 20) of the test images among the training images' embeddings,
  the image tower alone.

Sweep (``SETTINGS`` x seeds {0, 1, 2} = 18 runs): Muon at lr {1e-3, 2e-3 (the default),
4e-3}; AdamW at 5e-4 (its usual range; the recipe's lr before Muon,
experiments/shape_learning.md) and at 2e-3 (the default's lr); and the default with
augmentation ``random_resized_crop(0.7)`` (70-100 % of the area, aspect 3/4-4/3; a
milder crop than the README's 0.5 for photos, as the digits fill their 8x8 box and a
small crop can cut off the stroke that tells 7 from 1; no flips, which change digits).
Everything else (warmup, weight decay 1e-4, clipping 1.0) is the recipe's for both
optimizers. The curves' point at step s is the 400-step cosine run at step s, not a run
of s steps (its learning rate has not decayed yet).

Size (measured 2026-12-01 on this 2-core machine while other jobs kept both cores busy,
load ~7.5; a 120-step run with evals every 20 steps, pinned to one core with
``taskset -c 0``): 98 s wall, of which the run had 62 s of CPU time, i.e. ~0.64 of the
core. Scaling its phases by that share gives an idle core's times: start-up and
compilation 27 s -> ~17 s; a training step ``train/step_time_ms_p50`` ~480 ms -> ~0.31 s;
the first eval round (compiling) ~9 s -> ~6 s; each later round ~1 s -> <1 s. One run:
17 + 400 x 0.31 + 6 + 9 x 0.7 ~ 155 s (~160 s allowing 0.33 s per step). The 18 runs
two at a time (``--parallel=2`` pins each to one core) then take 9 x 155-160 s ~ 23-24
min on the idle machine, within the 30 min budget with ~6 min for the estimate's error.

``:tiny``: the seconds-long smoke version (apply_tiny: 6 steps of batch 16, 16 px, tiny
towers, captions still 32 bytes; evals every 3 steps on 64 test rows) with 2 settings
(the default; AdamW 5e-4) x seed 0, ~40 s per run:

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_digits.py:tiny \\
        --workdir=/tmp/digits_smoke
"""

from __future__ import annotations

import os

import ml_collections

from multimodal_ssl.recipes import apply_tiny, load_recipe

EVALS = 10  # points per curve
NO_AUGMENT = "resize_small|center_crop|value_range(-1, 1)"  # the recipe's
AUGMENT = "random_resized_crop(0.7)|value_range(-1, 1)"
# (optimizer, learning rate, pp_train) per setting; the first is the default recipe.
SETTINGS = (
    ("muon", 2e-3, NO_AUGMENT),
    ("muon", 1e-3, NO_AUGMENT),
    ("muon", 4e-3, NO_AUGMENT),
    ("adamw", 5e-4, NO_AUGMENT),
    ("adamw", 2e-3, NO_AUGMENT),
    ("muon", 2e-3, AUGMENT),
)
SEEDS = (0, 1, 2)
# Bytes: the longest caption and prompt, "the digit seven, written by hand", has 32.
MAX_TEXT_LEN = 32
TINY_SETTINGS = SETTINGS[0], SETTINGS[3]
# Must match experiments/digits_data.py (CLASSNAMES, ZEROSHOT_TEMPLATES).
CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {}", "a handwritten {}", "the digit {}, written by hand")


def digits_dir() -> str:
    """The folder ``experiments/digits_data.py`` wrote: ``$DIGITS_DIR``, else /tmp/digits."""
    return os.environ.get("DIGITS_DIR") or "/tmp/digits"


def digits_evals(
    root: str, every_steps: int, max_examples: int | None = None
) -> ml_collections.ConfigDict:
    """Zero-shot, retrieval and k-NN on ``<root>/test.csv`` every ``every_steps`` (the
    module docstring); ``max_examples``: None = all 359 test rows."""
    test = f"csv:{os.path.join(root, 'test.csv')}"

    def limit():  # a fresh placeholder for None (shared ones would be linked), settable
        return ml_collections.config_dict.placeholder(int) if max_examples is None else max_examples

    common = {"data": test, "every_steps": every_steps}
    return ml_collections.ConfigDict(
        {
            "zeroshot": {
                "type": "zeroshot",
                **common,
                "max_examples": limit(),
                "label_key": "label",
                "classnames": list(CLASSNAMES),
                "templates": list(TEMPLATES),
            },
            "retrieval": {"type": "retrieval", **common, "max_examples": limit()},
            "knn": {
                "type": "knn",
                **common,
                "max_examples": limit(),
                "label_key": "label",
                "train_data": f"csv:{os.path.join(root, 'train.csv')}",
                "max_train_examples": limit(),
            },
        }
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/siglip.py on the digits CSVs (module docstring); ``arg``: None or "tiny"."""
    if arg not in (None, "tiny"):
        raise ValueError(f"siglip_digits.py: unknown variant {arg!r}; known: 'tiny'")
    config = load_recipe(os.path.join(os.path.dirname(__file__), "..", "siglip.py"), None)
    root = digits_dir()
    config.data.train = f"csv:{os.path.join(root, 'train.csv')}"
    config.data.image_size = 32
    config.data.max_text_len = MAX_TEXT_LEN
    config.model.image.variant = "mu/8"
    if arg == "tiny":
        apply_tiny(config)  # 6 steps of batch 16, 16 px, tiny towers
        config.data.max_text_len = MAX_TEXT_LEN  # not its 16: the prompts would all be equal
        config.evals = digits_evals(root, every_steps=3, max_examples=64)
    else:
        config.evals = digits_evals(root, every_steps=config.total_steps // EVALS)
    config.checkpoint.every_steps = config.total_steps  # at the end only
    return config


def get_hyper(h, arg: str | None = None):
    """``SETTINGS`` x ``SEEDS`` (``:tiny``: ``TINY_SETTINGS`` x seed 0). Runs are named
    by every varying key, e.g. ``name=muon,lr=0.002,pp_train=resize_small_...,seed=0``."""
    settings, seeds = (TINY_SETTINGS, [0]) if arg == "tiny" else (SETTINGS, list(SEEDS))
    names, lrs, pps = zip(*settings, strict=True)
    return h.product([
        h.zipit([
            h.sweep("config.optim.name", list(names)),
            h.sweep("config.optim.lr", list(lrs)),
            h.sweep("config.data.pp_train", list(pps)),
        ]),
        h.sweep("config.seed", seeds),
    ])
