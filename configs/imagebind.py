"""ImageBind-style training (Girdhar et al., 2023, arXiv 2305.05665): one tower per
modality (image, text, depth, audio), each bound to the image tower only (the anchor)
with the pairwise sigmoid loss; text<->audio, text<->depth and depth<->audio are never
trained directly and align through the anchor ("emergent" alignment).

    python -m multimodal_ssl.main --config=configs/imagebind.py --workdir=/tmp/imagebind
    python -m multimodal_ssl.main --config=configs/imagebind.py:tiny --workdir=/tmp/tiny

Offline on ``generated:shapes``: each scene's image, its depth map (silhouettes and
position, no colour) and a synthesised 1 s clip (pitch = colour, timbre = shape, onset =
column, envelope = row; ``multimodal_ssl/data/shapes_audio.py``). Evals: retrieval for
every modality pair and zero-shot shape+colour classification from image and audio, and
shape classification from depth (which carries no colour). Results:
``experiments/imagebind.md``.
Variants: ``tiny`` (seconds; tests), ``all_pairs`` (every pair trained directly).
"""

import itertools

import ml_collections

from multimodal_ssl.config import base_config, set_towers
from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import apply_tiny, use_muon

MODALITIES = ("image", "text", "depth", "audio")
SAMPLE_RATE = 8000  # audio: 1 s clips at 8 kHz, 32 ms windows, 16 ms hop -> 63 x 48 log-mel


def imagebind_evals(every_steps: int, max_examples: int = 1024) -> ml_collections.ConfigDict:
    """Retrieval for every pair of MODALITIES and zero-shot from image, audio and depth
    on the held-out ``generated:shapes:test`` scenes.

    Retrieval counts a match as correct when it shows the same scene description (same
    caption: shape, colour, size, position; ``same_if="text"``): the 1024 test scenes
    hold ~12 copies of each description that differ only in sub-cell jitter and shade,
    which no modality but the image can tell apart. Text is the candidate side of its
    pairs."""
    test = {
        "data": "generated:shapes:test",
        "every_steps": every_steps,
        "max_examples": max_examples,
    }
    order = ("image", "depth", "audio", "text")  # text last: the candidates of its pairs
    evals = {
        f"retrieval_{a}_{b}": {
            "type": "retrieval",
            "query": a,
            "candidates": b,
            "same_if": "text",
            **test,
        }
        for a, b in itertools.combinations(order, 2)
    }
    for modality, label in (("image", None), ("audio", None), ("depth", "shape_label")):
        evals[f"zeroshot_{modality}"] = {
            "type": "zeroshot",
            "query": modality,
            "label_key": label,
            **test,
        }
    return ml_collections.ConfigDict(evals)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.seed = 0
    config.total_steps = 400
    config.batch_size = 128
    config.log_every_steps = 10

    config.data.train = "generated:shapes"
    config.data.image_size = 64
    config.data.max_text_len = 48
    config.data.shapes = {"audio_sample_rate": SAMPLE_RATE, "audio_seconds": 1.0}
    config.data.pp = {
        "depth": "resize_small|center_crop|value_range(-1, 1)",
        "audio": f"resample({SAMPLE_RATE})|crop(1.0)|log_mel(48, 32, 16)",
    }

    encoder = {"mlp_dim": 512, "num_heads": 4}
    set_towers(
        config,
        {
            "image": {
                "type": "vit",
                "variant": "mu/8",
                "width": 128,
                "depth": 3,
                "pool": "gap",
                **encoder,
            },
            "text": {
                "type": "text",
                "variant": "mu",
                "width": 128,
                "depth": 2,
                "pool": "mean",
                **encoder,
            },
            "depth": {
                "type": "vit",
                "variant": "mu/8",
                "width": 128,
                "depth": 2,
                "pool": "gap",
                **encoder,
            },
            "audio": {
                "type": "audio",
                "variant": "mu",
                "patch_size": (8, 7),
                "width": 128,
                "depth": 2,
                "pool": "gap",
                **encoder,
            },
        },
    )
    config.model.embed_dim = 128

    # Every modality against the image (ImageBind); one (t, b) per pair.
    config.loss = objective_config("sigmoid", impl="ring", pairs="anchor:image")

    # Muon on the weight matrices, AdamW on the rest, lr 2e-3: learns the shape attribute
    # ~3x faster than AdamW here (zero-shot 0.52 -> 0.96 in 400 steps; shape_learning.md).
    use_muon(config)

    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 2
    config.evals = imagebind_evals(every_steps=config.total_steps)

    if arg == "tiny":
        apply_tiny(config)
        config.data.pp.audio = f"resample({SAMPLE_RATE})|crop(0.25)|log_mel(16, 32, 16)"
        config.model.towers.audio.patch_size = 4
        config.evals = imagebind_evals(every_steps=1000, max_examples=64)
    elif arg == "all_pairs":
        config.loss.pairs = "all"
    elif arg:
        raise ValueError(
            f"configs/imagebind.py: unknown variant {arg!r}; known: 'tiny', 'all_pairs'"
        )
    return config
