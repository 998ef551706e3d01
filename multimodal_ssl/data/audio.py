"""Audio decoding and log-mel features for the input pipeline (numpy, soundfile, soxr).

One example's audio goes encoded bytes (WAV, FLAC, OGG, ... anything libsndfile reads)
or a waveform array -> :func:`decode_audio` (mono float32 [T] at the target rate) ->
:func:`crop_or_pad` (fixed length) -> :func:`log_mel_spectrogram` (float32
[frames, n_mels]). :class:`AudioPreprocess` runs the three from a config string (see
its docstring), like :mod:`multimodal_ssl.data.preprocess` does for images.

Feature conventions (those of ``torchaudio.transforms.MelSpectrogram`` with
``win_length = n_fft``, ``pad_mode="constant"``, ``power=2``):

* STFT: periodic Hann window of ``n_fft`` samples, ``rfft`` of size ``n_fft``, power
  ``|X|^2``. Centre padding with zeros (not reflection: it works for any length and
  matches the zero padding of :func:`crop_or_pad`): ``n_fft // 2`` zeros on each side
  and one more on the right when ``n_fft`` is odd, so frame ``t`` is centred on sample
  ``t * hop_length`` and ``frames = 1 + len(wave) // hop_length`` for every ``n_fft``.
* Mel scale: HTK, ``mel = 2595 log10(1 + f / 700)``; ``n_mels`` triangles in Hz
  between mel-equispaced edges over ``[f_min, f_max]``, peak 1, no area normalisation.
* Log: natural ``log(mel + 1e-6)``.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
import soundfile
import soxr

from multimodal_ssl.data.preprocess import _parse_op
from multimodal_ssl.data.records import BadRecord

DEFAULT_AUDIO_PP = "resample(16000)|crop(1.0)|log_mel(64, 25, 10)"
LOG_OFFSET = 1e-6  # added to the mel power before the log


# ------------------------------------------------------------------------ decoding


def decode_audio(data: bytes | np.ndarray, where: str, sample_rate: int) -> np.ndarray:
    """Encoded audio bytes or a waveform array -> mono float32 [T] in [-1, 1] at
    ``sample_rate`` Hz.

    Bytes are decoded with soundfile; an array is a waveform [T] or [T, C] already at
    ``sample_rate`` (float in [-1, 1], or signed integer PCM scaled by its type's range,
    e.g. int16 / 32768). Channels are averaged, other rates resampled with soxr, and
    the result clipped to [-1, 1]. Raises BadRecord (message starting with ``where``)
    for undecodable or truncated bytes, empty audio, non-finite samples and arrays of
    the wrong rank or dtype.
    """
    if isinstance(data, np.ndarray):
        wave, rate = _array_wave(data, where), sample_rate
    elif isinstance(data, bytes | bytearray | memoryview):
        wave, rate = _decode_bytes(bytes(data), where)
    else:
        raise BadRecord(where, f"no audio bytes or array (got {type(data).__name__})")
    if wave.shape[0] == 0:
        raise BadRecord(where, "empty audio (0 samples)")
    if not np.all(np.isfinite(wave)):
        raise BadRecord(where, "audio has non-finite (NaN or inf) samples")
    mono = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
        if mono.shape[0] == 0:
            raise BadRecord(where, f"audio too short to resample from {rate} to {sample_rate} Hz")
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def _decode_bytes(data: bytes, where: str) -> tuple[np.ndarray, int]:
    """-> (float32 [T, C], sample rate)."""
    if not data:
        raise BadRecord(where, "no audio bytes (empty)")
    if data[:4] == b"RIFF" and len(data) >= 8:
        # libsndfile silently returns the frames present in a truncated WAV; the RIFF
        # size says how long it should be (0 / 0xFFFFFFFF: unknown, streamed writers).
        riff_size = int.from_bytes(data[4:8], "little")
        if 0 < riff_size < 0xFFFFFFFF and len(data) < riff_size + 8:
            raise BadRecord(
                where, f"truncated WAV: header says {riff_size + 8} bytes, got {len(data)}"
            )
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, ValueError) as e:
        raise BadRecord(
            where, f"undecodable or truncated audio ({type(e).__name__}: {e})"
        ) from None
    return wave, int(rate)


def _array_wave(array: np.ndarray, where: str) -> np.ndarray:
    """A waveform array [T] or [T, C] -> float32 [T, C]."""
    if array.ndim not in (1, 2):
        raise BadRecord(where, f"audio array must be [T] or [T, C], got shape {array.shape}")
    if np.issubdtype(array.dtype, np.signedinteger):
        scale = -1.0 / np.iinfo(array.dtype).min
        wave = array.astype(np.float32) * np.float32(scale)
    elif np.issubdtype(array.dtype, np.floating):
        wave = array.astype(np.float32, copy=False)
    else:
        raise BadRecord(where, f"audio array must be float or signed int, got {array.dtype}")
    return wave if wave.ndim == 2 else wave[:, None]


def crop_or_pad(wave: np.ndarray, num_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """Waveform [T] -> [num_samples]: a uniformly placed crop drawn from ``rng``
    (training) or the centre crop when ``rng`` is None (eval); a shorter clip is
    zero-padded at the end."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    excess = wave.shape[0] - num_samples
    if excess < 0:
        return np.pad(wave, (0, -excess))
    start = excess // 2 if rng is None else int(rng.integers(0, excess + 1))
    return wave[start : start + num_samples]


# ------------------------------------------------------------------------ features


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(freq) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """HTK triangular mel filters, float64 [n_fft // 2 + 1, n_mels] (read-only, cached).

    Filter ``m`` rises linearly (in Hz) from edge ``m`` to 1 at edge ``m + 1`` and falls
    to 0 at edge ``m + 2``, the ``n_mels + 2`` edges equispaced in mel over
    [f_min, f_max] (default f_max = sample_rate / 2). Raises ValueError for an empty
    filter (too many mel bins for ``n_fft``) or a bad frequency range.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
            f"got f_min={f_min}, f_max={f_max}"
        )
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"need n_mels >= 1 and n_fft >= 2, got {n_mels}, {n_fft}")
    fft_freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    rise = (fft_freqs[:, None] - edges[None, :-2]) / np.diff(edges)[None, :-1]
    fall = (edges[None, 2:] - fft_freqs[:, None]) / np.diff(edges)[None, 1:]
    filters = np.maximum(0.0, np.minimum(rise, fall))
    if np.any(filters.max(axis=0) == 0):
        raise ValueError(
            f"{n_mels} mel bins over [{f_min}, {f_max}] Hz is too many for n_fft={n_fft} at "
            f"{sample_rate} Hz: some filters cover no FFT bin (lower n_mels or raise the window)"
        )
    filters.flags.writeable = False
    return filters


@functools.lru_cache(maxsize=16)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window float64 [n] (read-only)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    window.flags.writeable = False
    return window


def log_mel_spectrogram(
    wave: np.ndarray,
    sample_rate: int,
    *,
    n_mels: int,
    n_fft: int,
    hop_length: int,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """Waveform [T] -> log(mel power + 1e-6), float32 [1 + T // hop_length, n_mels].

    Hann-windowed power STFT with zero centre padding and HTK mel filters (see the
    module docstring); computed in float64.
    """
    if hop_length < 1:
        raise ValueError(f"hop_length must be >= 1, got {hop_length}")
    filters = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    padded = np.pad(np.asarray(wave, np.float64), (n_fft // 2, n_fft - n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    spectrum = np.fft.rfft(frames * _hann(n_fft), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(power @ filters + LOG_OFFSET).astype(np.float32)


# ---------------------------------------------------------------------- the pp spec


def _positive(name: str, value: Any, kind: type = float) -> Any:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)) or not value > 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")
    return value


def _resample(rate: int) -> dict[str, Any]:
    return {"sample_rate": _positive("rate", rate, int)}


def _crop(seconds: float) -> dict[str, Any]:
    return {"seconds": _positive("seconds", seconds)}


def _log_mel(
    n_mels: int, window_ms: float, hop_ms: float, f_min: float = 0.0, f_max: float | None = None
) -> dict[str, Any]:
    return {
        "n_mels": _positive("n_mels", n_mels, int),
        "window_ms": _positive("window_ms", window_ms),
        "hop_ms": _positive("hop_ms", hop_ms),
        "f_min": f_min,
        "f_max": f_max,
    }


def _normalize(mean: float, std: float) -> dict[str, Any]:
    if not isinstance(mean, int | float) or isinstance(mean, bool):
        raise ValueError(f"mean must be a number, got {mean!r}")
    return {"mean": float(mean), "std": float(_positive("std", std))}


_OPS = {"resample": _resample, "crop": _crop, "log_mel": _log_mel, "normalize": _normalize}
_REQUIRED = ("resample", "crop", "log_mel")  # in this order; "normalize" may follow


class AudioPreprocess:
    """Audio preprocessing from a config string, ops joined by ``|`` in this order:

      ``resample(rate)``                     decode to mono at ``rate`` Hz
      ``crop(seconds)``                      random (train) / centre (eval) crop to
                                             round(seconds * rate) samples, zero-padded
      ``log_mel(n_mels, window_ms, hop_ms, f_min=0.0, f_max=None)``
                                             log-mel features, n_fft = window length =
                                             round(window_ms * rate / 1000) samples, hop
                                             round(hop_ms * rate / 1000) samples
      ``normalize(mean, std)``               optional, last: (x - mean) / std

    ``preprocess(raw, where, rng)``: encoded bytes or waveform array -> float32
    [frames, n_mels] = ``output_shape``; the crop is random only when ``train`` and
    ``rng`` is given. Bad specs raise ValueError naming the spec and the op.
    """

    def __init__(self, spec: str, *, train: bool):
        self.train = train
        texts = [t.strip() for t in spec.split("|")]
        self.spec = "|".join(texts)
        params: dict[str, Any] = {}
        names = []
        for text in texts:
            name, args, kwargs = _parse_op(text, self.spec)
            if name not in _OPS:
                raise ValueError(f"pp {self.spec!r}: unknown op {name!r}; known: {sorted(_OPS)}")
            try:
                params.update(_OPS[name](*args, **kwargs))
            except (TypeError, ValueError) as e:
                raise ValueError(f"pp {self.spec!r}: op {name}: {e}") from None
            names.append(name)
        if tuple(names) not in (_REQUIRED, (*_REQUIRED, "normalize")):
            raise ValueError(
                f"pp {self.spec!r}: ops must be {'|'.join(_REQUIRED)} (each once, in this "
                f"order) optionally followed by normalize, got {'|'.join(names)}"
            )
        self.sample_rate: int = params["sample_rate"]
        self.num_samples = max(1, round(params["seconds"] * self.sample_rate))
        self.n_fft = round(params["window_ms"] * self.sample_rate / 1000)
        self.hop_length = round(params["hop_ms"] * self.sample_rate / 1000)
        self.n_mels: int = params["n_mels"]
        self.f_min, self.f_max = params["f_min"], params["f_max"]
        self.mean, self.std = params.get("mean", 0.0), params.get("std", 1.0)
        if self.n_fft < 2 or self.hop_length < 1:
            raise ValueError(
                f"pp {self.spec!r}: op log_mel: window and hop are {self.n_fft} and "
                f"{self.hop_length} samples at {self.sample_rate} Hz; need >= 2 and >= 1"
            )
        try:
            mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max)
        except (TypeError, ValueError) as e:
            raise ValueError(f"pp {self.spec!r}: op log_mel: {e}") from None

    @property
    def output_shape(self) -> tuple[int, int]:
        """(frames, n_mels) of every output."""
        return 1 + self.num_samples // self.hop_length, self.n_mels

    def __call__(
        self, raw: bytes | np.ndarray, where: str, rng: np.random.Generator | None
    ) -> np.ndarray:
        """Raw audio -> float32 [frames, n_mels]; BadRecord for unreadable audio."""
        wave = decode_audio(raw, where, self.sample_rate)
        wave = crop_or_pad(wave, self.num_samples, rng if self.train else None)
        features = log_mel_spectrogram(
            wave,
            self.sample_rate,
            n_mels=self.n_mels,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            f_min=self.f_min,
            f_max=self.f_max,
        )
        if self.mean != 0.0 or self.std != 1.0:
            features -= np.float32(self.mean)
            features *= np.float32(1 / self.std)
        return features

    def __repr__(self) -> str:
        return f"AudioPreprocess({self.spec!r}, train={self.train})"
