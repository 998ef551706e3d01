"""multimodal_ssl: multimodal contrastive pretraining (SigLIP, CLIP) in JAX/Flax."""

from setuptools import find_packages, setup

# Version ranges are the ones the test suite runs against (see README "Install").
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "ml-collections>=1.1.0,<1.2",
    "tensorflow-datasets>=4.9.10,<5",
    "absl-py>=2.1,<3",
    "numpy>=2.0,<3",
    "pillow>=11.0,<14",
    "tensorboardX>=2.6.2,<3",
    "tqdm>=4.66,<5",
    "einops>=0.8,<0.9",
    # Pretrained SigLIP folders (safetensors) and the sentencepiece: / hf: tokenizers.
    "safetensors>=0.4,<1",
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.20,<1",
    # Audio: decoding (libsndfile: WAV, FLAC, OGG) and resampling.
    "soundfile>=0.13,<0.15",
    "soxr>=0.5,<2",
]

# Accelerator builds of jaxlib, through jax's own extras (same jax range as above): NVIDIA
# GPUs with CUDA 12 or 13 (the CUDA libraries come as pip wheels; the host needs only the
# NVIDIA driver), or Cloud TPU VMs (libtpu).
EXTRAS_REQUIRE = {
    "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
    "cuda13": ["jax[cuda13]>=0.10.2,<0.11"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "dev": [
        "pytest>=9.0,<10",
        "pytest-xdist==3.8.0",  # the suite runs on 2 workers (README: Test)
        "ruff==0.17.6",
        "matplotlib>=3.8,<4",
        # Reference implementations for the converter tests (CPU wheel of torch).
        "torch==2.13.0",
        "transformers==5.23.0",
        # Reference for the linear-probe test; notebook execution (tests/test_colabs.py).
        "scikit-learn==1.9.1",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
}

setup(
    name="multimodal_ssl",
    version="0.1.0",
    description="Multimodal self-supervised and contrastive pretraining in JAX/Flax.",
    packages=find_packages(include=["multimodal_ssl", "multimodal_ssl.*"]),
    # The benchmarks' class names and prompt templates (multimodal_ssl/evals/benchmarks).
    package_data={"multimodal_ssl.evals.benchmarks": ["*.json"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
