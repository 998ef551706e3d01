"""Audio tower: a ViT over log-mel spectrogram patches (AST, Gong et al. 2021; the audio
encoders of ImageBind and LanguageBind).

The spectrogram ``[b, frames, n_mels]`` is read as a one-channel image with frequency
on the vertical and time on the horizontal axis (``[b, n_mels, frames, 1]``) and cut into
``patch_size`` patches; everything else is :class:`~multimodal_ssl.models.vit.ViT`
(same params, so the same sharding table and converters apply).
"""

from __future__ import annotations

import jax.numpy as jnp

from multimodal_ssl.models.vit import ViT


class AudioTransformer(ViT):
    """log-mel spectrograms f32 [b, frames, n_mels] -> [b, num_classes or width] f32.

    ``frames`` and ``n_mels`` must be divisible by the patch size (e.g. 100 frames of
    10 ms and 64 mel bins with patch 4 or a ``(16, 4)``-style pair ``(freq, time)``).
    Fields: those of ViT (``pool`` defaults to ``"gap"`` here).
    """

    pool: str = "gap"

    def __call__(self, spectrogram: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if spectrogram.ndim != 3:
            raise ValueError(
                f"AudioTransformer: spectrogram must be [b, frames, n_mels], got shape "
                f"{spectrogram.shape}"
            )
        return super().__call__(jnp.swapaxes(spectrogram, 1, 2)[..., None], train=train)
