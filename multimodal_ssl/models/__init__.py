"""Models: ViT and text towers, the two-tower contrastive model and shared blocks."""

from multimodal_ssl.models.common import VARIANTS, MAPHead, parse_variant, posemb_sincos2d
from multimodal_ssl.models.text import TextTransformer
from multimodal_ssl.models.towers import TwoTower, l2_normalize
from multimodal_ssl.models.vit import ViT

__all__ = [
    "VARIANTS",
    "MAPHead",
    "TextTransformer",
    "TwoTower",
    "ViT",
    "l2_normalize",
    "parse_variant",
    "posemb_sincos2d",
]
