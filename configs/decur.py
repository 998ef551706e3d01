"""DeCUR (Wang et al., ECCV 2024) on images and depth maps (the paper's RGB-depth
setting, here on ``generated:shapes``): Barlow-Twins cross-correlation between the two
modalities with 7/8 of the dimensions common (diagonal -> 1) and 1/8 unique
(diagonal -> 0), plus intra-modal redundancy reduction between two augmented views of
each modality (``data.views``: ``image_view2``, ``depth_view2``).

    python -m multimodal_ssl.main --config=configs/decur.py --workdir=/tmp/decur
    python -m multimodal_ssl.main --config=configs/decur.py:tiny --workdir=/tmp/tiny

Keys: ``loss.common_fraction``, ``loss.off_diagonal_weight`` (lambda), ``loss.views``
(``""``: the cross-modal term alone). The objective takes the towers' projections before
L2 normalisation (its BatchNorm standardises them); evals use the normalised ones.
Evals: image <-> depth retrieval (same example) and k-NN on the image embeddings.
Variants: ``tiny`` (seconds; tests).
"""

import ml_collections

from multimodal_ssl.config import base_config, set_towers
from multimodal_ssl.losses.objectives import objective_config
from multimodal_ssl.recipes import apply_tiny, shapes_probe_evals, use_muon


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/decur.py: unknown variant {arg!r}; known: 'tiny'")
    config = base_config()
    config.total_steps = 400
    config.batch_size = 128
    config.data.train = "generated:shapes"
    config.data.image_size = 64
    encoder = {"variant": "mu/8", "width": 128, "mlp_dim": 512, "num_heads": 4, "pool": "gap"}
    set_towers(
        config,
        {
            "image": {"type": "vit", "depth": 3, **encoder},
            "depth": {"type": "vit", "depth": 2, **encoder},
        },
    )
    config.model.embed_dim = 128
    use_muon(config)
    config.checkpoint.every_steps = 200
    retrieval = {
        "type": "retrieval",
        "query": "image",
        "candidates": "depth",
        "data": "generated:shapes:test",
        "every_steps": config.total_steps,
        "max_examples": 1024,
    }
    knn = shapes_probe_evals(every_steps=config.total_steps).knn
    config.evals = ml_collections.ConfigDict({"retrieval_image_depth": retrieval, "knn": knn})
    if arg == "tiny":
        apply_tiny(config)
        retrieval.update(every_steps=1000, max_examples=64)
        config.evals = ml_collections.ConfigDict({"retrieval_image_depth": retrieval})
    # Mild random shifts: the two views of a modality differ, image and depth stay aligned
    # only up to them (as two augmented views in the paper).
    size = config.data.image_size
    shift = f"resize({size + size // 8})|random_crop|value_range(-1, 1)"
    config.data.pp_train = shift
    config.data.pp = {"depth": shift}
    config.data.views = {"image_view2": "image", "depth_view2": "depth"}
    config.loss = objective_config(
        "decur",
        pairs="image-depth",
        views="image-image_view2,depth-depth_view2",
        common_fraction=448 / 512,
        off_diagonal_weight=0.0051,
    )
    return config
