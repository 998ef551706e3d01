"""SigLIP 2 (Tschannen et al. 2025) on the SigLIP recipe (configs/siglip.py): a LocCa text
decoder on the image tower's patch tokens learns captioning, referring expressions and
grounded captioning all along (multimodal_ssl/locca.py), and for the last 20 % of
training the image tower also learns local-to-global consistency (SILC) and masked patch
prediction (TIPS) against its EMA teacher (multimodal_ssl/distill.py; README "SigLIP 2").

    python -m multimodal_ssl.main --config=configs/siglip2.py --workdir=/tmp/siglip2
    python -m multimodal_ssl.main --config=configs/siglip2.py:tiny --workdir=/tmp/siglip2_tiny

Each term is one key: ``--config.decoder.weight=0``, ``--config.distill.local_weight=0``
or ``--config.distill.masked_weight=0`` switches it off. Variants: those of siglip.py.
The ``locca`` eval greedily decodes captions, boxes and names on held-out scenes.
NaFlex (native aspect ratios; distillation and decoder off): ``:naflex``, ``:tiny,naflex``.
"""

import os

import ml_collections

from multimodal_ssl.recipes import load_recipe, shapes_dense_evals, split_variant, use_naflex


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg, naflex = split_variant(arg, "naflex")  # NaFlex: ":naflex", ":tiny,naflex"
    config = load_recipe(os.path.join(os.path.dirname(__file__), "siglip.py"), arg)
    if arg in (None, "probes"):  # patch-token segmentation probe at the end (dense features)
        config.evals.update(shapes_dense_evals(every_steps=config.total_steps))
    dec = config.decoder
    dec.weight = 1.0  # LocCa / SigLIP 2: the decoder loss next to the sigmoid loss, weight 1
    dec.width, dec.depth, dec.num_heads, dec.mlp_dim = 128, 2, 4, 512
    config.evals.locca = {
        "type": "locca", "data": "generated:shapes:test", "every_steps": config.total_steps,
        "max_examples": 256,
    }
    d = config.distill
    d.local_weight = 1.0  # SigLIP 2: 1 for the local-to-global term,
    d.masked_weight = 0.25  # 0.25 for masked prediction
    d.start = 0.8  # both on for the last 20 % of the steps
    d.ema = 0.999
    d.num_local = 4
    d.mask_ratio = 0.5
    d.local_pp = "random_resized_crop(0.05, 0.4)|flip_lr|value_range(-1, 1)"
    # Local crops at half the resolution; a learned position embedding has one size, so
    # the image tower uses fixed 2-d sin-cos position embeddings here.
    config.model.towers.image.posemb = "sincos2d"
    if arg == "tiny":
        d.start = 0.5  # on from step 4 of 6 (the tests resume across the switch)
        d.ema = 0.9
        d.num_local = 2
        d.head_hidden, d.head_bottleneck, d.prototypes = 32, 16, 32
        dec.width, dec.depth, dec.num_heads, dec.mlp_dim = 32, 1, 2, 64
        config.evals.locca.max_examples = 32
        config.model.towers.image.patch_size = 4  # 16 patches at 16 px, 4 at 8 px
    else:
        d.head_hidden, d.head_bottleneck, d.prototypes = 512, 128, 1024
    if naflex:  # native aspect ratios, one compile (README "SigLIP 2: NaFlex training")
        use_naflex(config)
        # The decoder and the dense probe read patch tokens, which a NaFlex tower does
        # not return (yet): off, with their evals.
        dec.weight = 0.0
        for name in ("locca", "dense_probe"):
            if name in config.evals:
                del config.evals[name]
    return config
