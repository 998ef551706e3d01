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

    ``n_mels`` must be divisible by the patch's frequency side; trailing frames that do
    not fill a whole patch are dropped (log-mel pipelines give ``1 + T // hop`` frames,
    e.g. 101 for 1 s at a 10 ms hop: patch 4 uses the first 100). ``patch_size``: an int
    or a ``(freq, time)`` pair. Fields: those of ViT (``pool`` defaults to ``"gap"``).
    """

    pool: str = "gap"

    def __call__(self, spectrogram: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        if spectrogram.ndim != 3:
            raise ValueError(
                f"AudioTransformer: spectrogram must be [b, frames, n_mels], got shape "
                f"{spectrogram.shape}"
            )
        time_patch = self.sizes()["patch_size"][1]
        usable = spectrogram.shape[1] // time_patch * time_patch
        if usable == 0:
            raise ValueError(
                f"AudioTransformer: {spectrogram.shape[1]} frames are fewer than the time patch "
                f"{time_patch}"
            )
        x = jnp.swapaxes(spectrogram[:, :usable], 1, 2)[..., None]
        return super().__call__(x, train=train)
