"""multimodal_ssl: multimodal contrastive pretraining (SigLIP, CLIP) in JAX/Flax."""

__version__ = "0.1.0"
