"""Study: SigLIP 2's additions ablated on ``generated:shapes`` — base SigLIP, + the LocCa
decoder, + self-distillation and masked prediction, and all of them (configs/siglip2.py),
same towers, data and budget.

    python -m multimodal_ssl.sweep --config=configs/studies/siglip2_ablation.py \
        --workdir=/tmp/siglip2_ablation --parallel=2
    python experiments/siglip2_ablation.py --workdir=/tmp/siglip2_ablation

12 runs: arm {base, decoder, distill, all} x seeds {0, 1, 2}, each 200 steps of batch 128
(half the default recipe, so the 12 runs fit about half an hour on 2 CPU cores). Every
arm has the SigLIP 2 recipe's towers (sin-cos position embeddings, needed by the local
crops) and its evals at the end: zero-shot, retrieval, geometry, the dense patch probe
(segmentation mIoU) and the decoder's ``locca`` eval (captioning, referring, grounded;
skipped in the arms without the decoder). Self-distillation is on for the last 20 %.
Runs are named by the overrides, e.g. ``decoder.weight=1,local_weight=0,...,seed=0``.
"""

import os

import ml_collections

from multimodal_ssl.recipes import load_recipe

STEPS = 200
ARMS = {  # (decoder.weight, distill.local_weight, distill.masked_weight)
    "base": (0.0, 0.0, 0.0),
    "decoder": (1.0, 0.0, 0.0),
    "distill": (0.0, 1.0, 0.25),
    "all": (1.0, 1.0, 0.25),
}
SEEDS = (0, 1, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "..", "siglip2.py"), arg)
    if arg != "tiny":
        config.total_steps = STEPS
        config.optim.warmup_steps = round(0.075 * STEPS)
        config.checkpoint.every_steps = STEPS
        for cfg in config.evals.values():
            cfg.every_steps = STEPS
    return config


def get_hyper(h):
    decoder, local, masked = zip(*ARMS.values(), strict=True)
    return h.product([
        h.zipit([
            h.sweep("config.decoder.weight", list(decoder)),
            h.sweep("config.distill.local_weight", list(local)),
            h.sweep("config.distill.masked_weight", list(masked)),
        ]),
        h.sweep("config.seed", list(SEEDS)),
    ])
