"""Study: sigmoid (SigLIP) vs softmax (CLIP) loss across the global batch size, at equal
examples seen (the SigLIP paper's batch-size comparison, on ``generated:shapes``).

    python -m multimodal_ssl.sweep --config=configs/studies/siglip_loss_batch.py \
        --workdir=/tmp/loss_batch --dry_run
    python -m multimodal_ssl.sweep --config=configs/studies/siglip_loss_batch.py \
        --workdir=/tmp/loss_batch --plot=batch_size:eval/zeroshot/zeroshot_top1

36 runs: loss {sigmoid, softmax} x batch {32, 64, ..., 1024} x seeds {0, 1, 2}. Every run
sees 128 x 200 = 25,600 examples, half the default recipe's (so the 36 runs fit an hour on
2 CPU cores): ``total_steps = 25600 / batch``,
warmup 7.5 % of the steps (the recipe's 30 of 400), the zero-shot / retrieval evals
halfway and at the end, geometry at the end. Each loss keeps its recipe's initial
temperature (sigmoid ``t = log 10``, configs/siglip.py; softmax ``t = log(1/0.07)``,
configs/clip.py) and bias (sigmoid -10). Learning rate and everything else: configs/siglip.py.
Runs are named ``name=<loss>,batch_size=<B>,seed=<s>``. ``:ARG`` is passed to
configs/siglip.py (e.g. ``:probes``).
"""

import math
import os

import ml_collections

from multimodal_ssl.recipes import load_recipe

EXAMPLES = 128 * 200  # half the default recipe's 128 x 400 (fits an hour on 2 CPU cores)
BATCHES = (32, 64, 128, 256, 512, 1024)
SEEDS = (0, 1, 2)
T_INIT = {"sigmoid": math.log(10.0), "softmax": math.log(1 / 0.07)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return load_recipe(os.path.join(os.path.dirname(__file__), "..", "siglip.py"), arg)


def get_hyper(h):
    steps = [EXAMPLES // b for b in BATCHES]
    return h.product([
        h.zipit([
            h.sweep("config.loss.name", list(T_INIT)),
            h.sweep("config.loss.t_init", list(T_INIT.values())),
        ]),
        h.zipit([
            h.sweep("config.batch_size", list(BATCHES)),
            h.sweep("config.total_steps", steps),
            h.sweep("config.optim.warmup_steps", [round(0.075 * s) for s in steps]),
            h.sweep("config.evals.zeroshot.every_steps", [s // 2 for s in steps]),
            h.sweep("config.evals.retrieval.every_steps", [s // 2 for s in steps]),
            h.sweep("config.evals.geometry.every_steps", steps),
        ]),
        h.sweep("config.seed", list(SEEDS)),
    ])
