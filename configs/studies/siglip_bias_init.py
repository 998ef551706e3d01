"""Study: the sigmoid loss's initial bias ``b`` and log-temperature ``t`` (SigLIP's
``b = -10, t = log 10``; the paper reports that without the strongly negative bias the
many negatives dominate the first steps).

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_bias_init.py \
        --workdir=/tmp/bias_init --dry_run
    python -m multimodal_ssl.sweep --config=configs/studies/siglip_bias_init.py \
        --workdir=/tmp/bias_init --plot=b_init:eval/zeroshot/zeroshot_top1

18 runs: ``loss.b_init`` {0, -5, -10} x ``loss.t_init`` {log 1, log 10} x seeds {0, 1, 2},
200 steps of batch 128 (half the default recipe, so the 18 runs fit half an hour on 2 CPU
cores) with zero-shot and retrieval every 25 steps (the curves, not only the end point),
everything else as in configs/siglip.py. Runs are named
``b_init=<b>,t_init=<t>,seed=<s>`` (``t_init=0`` is log 1, ``2.303`` is log 10).
``:ARG`` is passed to configs/siglip.py (``:tiny`` gives a seconds-long version per run).
"""

import math
import os

import ml_collections

from multimodal_ssl.recipes import load_recipe

STEPS = 200
EVAL_EVERY = 25


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "..", "siglip.py"), arg)
    if arg != "tiny":
        config.total_steps = STEPS
        config.optim.warmup_steps = round(0.075 * STEPS)
        config.evals.zeroshot.every_steps = EVAL_EVERY
        config.evals.retrieval.every_steps = EVAL_EVERY
        config.evals.geometry.every_steps = STEPS
        config.checkpoint.every_steps = STEPS
    return config


def get_hyper(h):
    return h.product([
        h.sweep("config.loss.b_init", [0.0, -5.0, -10.0]),
        h.sweep("config.loss.t_init", [math.log(1.0), math.log(10.0)]),
        h.sweep("config.seed", [0, 1, 2]),
    ])
