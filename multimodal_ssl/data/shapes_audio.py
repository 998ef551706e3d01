"""A short synthetic sound for a ``generated:shapes`` scene (see :mod:`.shapes`).

Each object is one tone; its attributes map to properties a small audio encoder can
read off a log-mel spectrogram, so a caption's words have audible counterparts:

* colour -> fundamental pitch ``F0``: a ladder of major thirds (ratio 2^(1/3)) from
  220 Hz, red 220, orange 277, yellow 349, green 440, blue 554, purple 698 Hz.
* shape -> timbre (harmonic amplitudes ``a_n`` relative to the fundamental):
  circle a pure sine; square odd harmonics 1/n (a square wave); triangle odd
  harmonics 1/n^2 (a triangle wave); diamond all harmonics 1/n (a sawtooth). Up to
  ``MAX_HARMONIC``, only those below 0.45 x the sample rate (no aliasing); every timbre
  is scaled to the RMS of a sine of the same peak gain.
* size -> loudness: peak gain ``GAIN`` (small 0.1, large 0.25; about 8 dB apart),
  times the object's shade (0.8..1.0, its brightness in the image).
* grid column (left, centre, right) -> onset at 0, 1/4 or 1/2 of the clip, with a
  5 ms linear attack.
* grid row (top, middle, bottom) -> envelope after the onset: sustained, or an
  exponential decay with time constant 1/4 or 1/12 of the clip.
* the centre's jitter from its grid cell (``x - GRID[column]``, +-``JITTER``) detunes
  the pitch by up to +-``DETUNE_CENTS`` (20 cents, a tenth of the ladder's step).

Objects are summed; a mix whose peak exceeds 1 is scaled down to peak 1 (only scenes
with several loud overlapping objects). Everything is a pure function of the scene.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from multimodal_ssl.data.shapes import COLORS, GRID, JITTER, SHAPES, SceneObject

PITCHES = tuple(220.0 * 2 ** (k / 3) for k in range(len(COLORS)))  # Hz, in COLORS order
GAIN = (0.1, 0.25)  # peak gain per size (small, large)
ONSETS = (0.0, 0.25, 0.5)  # per grid column, fraction of the clip
DECAYS = (None, 0.25, 1 / 12)  # per grid row: decay time constant, fraction of the clip
DETUNE_CENTS = 20.0  # detune at the maximum jitter
MAX_HARMONIC = 9
ATTACK = 0.005  # seconds
_NYQUIST_MARGIN = 0.45  # keep harmonics below this fraction of the sample rate


@functools.lru_cache(maxsize=64)
def harmonics(shape: int, max_harmonic: int = MAX_HARMONIC) -> tuple[np.ndarray, np.ndarray]:
    """(harmonic numbers int [H], amplitudes float32 [H]) of SHAPES[shape], up to
    ``max_harmonic``, scaled to the RMS of a unit sine (sum of a_n^2 = 1)."""
    n = np.arange(1, max_harmonic + 1)
    name = SHAPES[shape]
    if name == "circle":
        n = n[:1]
        amps = np.ones(1)
    elif name == "square":
        n = n[n % 2 == 1]
        amps = 1.0 / n
    elif name == "triangle":
        n = n[n % 2 == 1]
        amps = 1.0 / n**2
    elif name == "diamond":
        amps = 1.0 / n
    else:
        raise ValueError(f"shape: {name!r} has no timbre")
    amps = (amps / np.sqrt(np.sum(amps**2))).astype(np.float32)
    n.flags.writeable = amps.flags.writeable = False
    return n, amps


def pitch(obj: SceneObject) -> float:
    """Fundamental frequency in Hz of ``obj``: its colour's pitch, detuned by its x jitter."""
    jitter = (obj.x - GRID[obj.position % 3]) / JITTER  # in [-1, 1]
    return PITCHES[obj.color] * 2 ** (DETUNE_CENTS * jitter / 1200)


def _tone(obj: SceneObject, sample_rate: int, num_samples: int) -> tuple[int, np.ndarray]:
    """(first sample, float32 [num_samples - first]): the tone of ``obj`` from its onset."""
    start = min(round(ONSETS[obj.position % 3] * num_samples), num_samples)
    f0 = pitch(obj)
    n, amps = harmonics(obj.shape, min(MAX_HARMONIC, int(_NYQUIST_MARGIN * sample_rate / f0)))
    t = np.arange(num_samples - start) / sample_rate  # float64 seconds since onset
    angle = (2 * np.pi) * np.mod(f0 * t, 1.0).astype(np.float32)  # phase, exact in float32
    wave = amps[0] * np.sin(angle)  # every timbre starts at the fundamental
    for k in range(1, len(n)):
        wave += amps[k] * np.sin(np.float32(n[k]) * angle)
    t = t.astype(np.float32)
    envelope = np.minimum(t * np.float32(1 / ATTACK), np.float32(1.0))
    decay = DECAYS[obj.position // 3]
    if decay is not None:
        envelope *= np.exp(t * np.float32(-sample_rate / (decay * num_samples)))
    wave *= envelope * np.float32(GAIN[obj.size] * obj.shade)
    return start, wave


def synthesize(scene: Sequence[SceneObject], *, sample_rate: int, duration: float) -> np.ndarray:
    """The sound of ``scene``: float32 [round(sample_rate * duration)] in [-1, 1]."""
    if not isinstance(sample_rate, int) or sample_rate < 4000:
        raise ValueError(f"sample_rate must be an int >= 4000 Hz, got {sample_rate!r}")
    if not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
    num_samples = round(sample_rate * duration)
    mix = np.zeros(num_samples, np.float32)
    for obj in scene:
        start, tone = _tone(obj, sample_rate, num_samples)
        mix[start:] += tone
    peak = float(np.max(np.abs(mix), initial=0.0))
    if peak > 1.0:
        mix *= np.float32(1.0 / peak)
    return mix
