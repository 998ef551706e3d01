"""Models: the towers (ViT, text, audio, MLP, sequence), the multi-tower contrastive
model and shared blocks."""

from multimodal_ssl.models.audio import AudioTransformer
from multimodal_ssl.models.common import MAPHead, posemb_sincos2d
from multimodal_ssl.models.mlp import MlpTower, SequenceTower
from multimodal_ssl.models.text import TextTransformer
from multimodal_ssl.models.towers import (
    TOWER_TYPES,
    MultiTower,
    build_model,
    l2_normalize,
    param_name,
    register_tower,
)
from multimodal_ssl.models.variants import VARIANTS, parse_variant
from multimodal_ssl.models.vit import ViT

__all__ = [
    "TOWER_TYPES",
    "VARIANTS",
    "AudioTransformer",
    "MAPHead",
    "MlpTower",
    "MultiTower",
    "SequenceTower",
    "TextTransformer",
    "ViT",
    "build_model",
    "l2_normalize",
    "param_name",
    "parse_variant",
    "posemb_sincos2d",
    "register_tower",
]
