"""Sanity row of the loss x batch study: the sigmoid loss's ring implementation against
its global form, same seed, data-parallel over 4 (emulated) devices — the curves must
be the same up to float summation order.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m multimodal_ssl.sweep \
        --config=configs/studies/siglip_ring_vs_global.py --workdir=/tmp/ring_vs_global
    python experiments/ring_vs_global.py --workdir=/tmp/ring_vs_global

6 runs: ``loss.impl`` {ring, global} x seeds {0, 1, 2}, 100 steps of batch 128 (4 x 32
per device), the zero-shot and retrieval evals at 50 and 100, everything else as
configs/siglip.py.
"""

import os

import ml_collections

from multimodal_ssl.recipes import load_recipe

STEPS = 100


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_recipe(os.path.join(os.path.dirname(__file__), "..", "siglip.py"), arg)
    if arg != "tiny":
        config.total_steps = STEPS
        config.log_every_steps = 1
        config.optim.warmup_steps = round(0.075 * STEPS)
        config.checkpoint.every_steps = STEPS
        config.evals.zeroshot.every_steps = STEPS // 2
        config.evals.retrieval.every_steps = STEPS // 2
        config.evals.geometry.every_steps = STEPS
    return config


def get_hyper(h):
    return h.product([
        h.sweep("config.loss.impl", ["ring", "global"]),
        h.sweep("config.seed", [0, 1, 2]),
    ])
