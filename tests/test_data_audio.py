"""Audio decoding, log-mel features, the audio pp spec and the shapes sound synthesiser.

Features are checked against transformers' numpy implementation (``audio_utils``)
configured to the same conventions: HTK mel, no area norm, periodic Hann, power 2,
zero centre padding, log(mel + 1e-6).
"""

import numpy as np
import pytest
import soundfile
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from multimodal_ssl.data import shapes, shapes_audio
from multimodal_ssl.data.audio import (
    DEFAULT_AUDIO_PP,
    AudioPreprocess,
    crop_or_pad,
    decode_audio,
    log_mel_spectrogram,
    mel_filterbank,
)
from multimodal_ssl.data.records import BadRecord

# (sample_rate, n_fft, hop_length, n_mels, f_min, f_max); even rates and n_fft, where
# the reference's FFT bin frequencies linspace(0, sr // 2, n_fft // 2 + 1) are exact.
FEATURE_CONFIGS = [
    (16000, 400, 160, 64, 0.0, None),
    (22050, 1024, 256, 80, 20.0, 8000.0),
    (8000, 256, 80, 40, 50.0, 3800.0),
]


def _reference_log_mel(wave, sample_rate, n_fft, hop, filters):
    """transformers' STFT + the given filters -> log(mel + 1e-6), [frames, n_mels]."""
    mel = spectrogram(
        wave.astype(np.float64),
        window_function(n_fft, "hann", periodic=True),
        frame_length=n_fft,
        hop_length=hop,
        power=2.0,
        center=True,
        pad_mode="constant",
        mel_filters=filters,
        mel_floor=0.0,
        dtype=np.float64,
    )
    return np.log(mel + 1e-6).T


def _sine(freq, sample_rate, seconds, amplitude=0.5):
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave, sample_rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * sample_rate / len(wave)


# ---------------------------------------------------------------------- features


@pytest.mark.parametrize("sample_rate, n_fft, hop, n_mels, f_min, f_max", FEATURE_CONFIGS)
def test_log_mel_matches_transformers(sample_rate, n_fft, hop, n_mels, f_min, f_max):
    ours_fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    ref_fb = mel_filter_bank(
        n_fft // 2 + 1, n_mels, f_min, f_max or sample_rate / 2, sample_rate, mel_scale="htk"
    )
    assert ours_fb.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(ours_fb, ref_fb, atol=1e-10)
    rng = np.random.default_rng(0)
    waves = [
        rng.uniform(-1, 1, sample_rate // 2).astype(np.float32),
        _sine(440.0, sample_rate, 0.37) + _sine(1234.5, sample_rate, 0.37, 0.05),
    ]
    for wave in waves:
        ours = log_mel_spectrogram(
            wave, sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop, f_min=f_min, f_max=f_max
        )
        ref = _reference_log_mel(wave, sample_rate, n_fft, hop, ref_fb)
        assert ours.dtype == np.float32
        assert ours.shape == ref.shape == (1 + len(wave) // hop, n_mels)
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("length", [1, 99, 551, 1102, 4000])
def test_log_mel_frames_with_odd_window(length):
    """n_fft = 551 (25 ms at 22050 Hz): still 1 + T // hop frames, and the frames the
    reference also has are equal (its padding is one sample shorter)."""
    wave = np.random.default_rng(length).uniform(-1, 1, length).astype(np.float32)
    ours = log_mel_spectrogram(wave, 22050, n_mels=40, n_fft=551, hop_length=551 // 2)
    assert ours.shape == (1 + length // (551 // 2), 40)
    if length > 551 // 2:  # the reference needs a whole frame
        ref = _reference_log_mel(wave, 22050, 551, 551 // 2, mel_filterbank(22050, 551, 40))
        np.testing.assert_allclose(ours[: len(ref)], ref, atol=1e-4)


def test_log_mel_of_silence_and_sine_peak():
    silence = log_mel_spectrogram(
        np.zeros(1600, np.float32), 16000, n_mels=64, n_fft=400, hop_length=160
    )
    np.testing.assert_allclose(silence, np.log(1e-6), rtol=1e-6)
    sine = log_mel_spectrogram(
        _sine(1000.0, 16000, 0.5), 16000, n_mels=64, n_fft=400, hop_length=160
    )
    filters = mel_filterbank(16000, 400, 64)
    centres = np.arange(201) * 40.0 @ filters / filters.sum(0)  # Hz, per mel bin
    assert abs(centres[np.argmax(sine[25])] - 1000.0) < 60.0


def test_mel_filterbank_rejects_bad_configs():
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mel_filterbank(16000, 64, 128)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(16000, 400, 64, 0.0, 9000.0)


# ---------------------------------------------------------------------- decoding


def _encode(wave, sample_rate, fmt, subtype, path):
    soundfile.write(path, wave, sample_rate, format=fmt, subtype=subtype)
    return path.read_bytes()


@pytest.mark.parametrize(
    "fmt, subtype, sample_rate, channels",
    [
        ("WAV", "PCM_16", 8000, 2),
        ("WAV", "FLOAT", 22050, 1),
        ("WAV", "PCM_16", 16000, 1),
        ("FLAC", "PCM_16", 22050, 2),
        ("FLAC", "PCM_24", 8000, 1),
        ("FLAC", "PCM_16", 16000, 2),
    ],
)
def test_decode_resamples_to_mono(tmp_path, fmt, subtype, sample_rate, channels):
    left = _sine(440.0, sample_rate, 0.5, amplitude=0.6)
    wave = np.stack([left, np.zeros_like(left)], 1) if channels == 2 else left
    data = _encode(wave, sample_rate, fmt, subtype, tmp_path / f"a.{fmt.lower()}")
    out = decode_audio(data, "clip.x", 16000)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - round(len(left) * 16000 / sample_rate)) <= 1
    assert abs(_peak_hz(out, 16000) - 440.0) <= 2.0
    middle = out[len(out) // 4 : 3 * len(out) // 4]
    expected = 0.6 / channels  # the channels are averaged
    assert abs(np.max(np.abs(middle)) - expected) < 0.01


def test_decode_arrays():
    pcm = np.array([0, 16384, -32768, 32767], np.int16)
    np.testing.assert_allclose(decode_audio(pcm, "w", 16000), [0, 0.5, -1, 32767 / 32768])
    stereo = np.array([[0.5, -0.5], [1.0, 0.0], [2.0, 2.0]], np.float64)
    np.testing.assert_allclose(decode_audio(stereo, "w", 16000), [0.0, 0.5, 1.0])  # clipped
    for bad, reason in [
        (np.zeros((2, 3, 4), np.float32), "must be \\[T\\] or \\[T, C\\]"),
        (np.zeros(10, np.uint8), "float or signed int"),
        (np.zeros(0, np.float32), "empty audio"),
        (np.array([0.1, np.nan], np.float32), "non-finite"),
    ]:
        with pytest.raises(BadRecord, match=f"^clip 7: .*{reason}"):
            decode_audio(bad, "clip 7", 16000)


def test_decode_bad_bytes(tmp_path):
    wave = _sine(440.0, 16000, 0.5)
    wav = _encode(wave, 16000, "WAV", "PCM_16", tmp_path / "a.wav")
    flac = _encode(wave, 16000, "FLAC", "PCM_16", tmp_path / "a.flac")
    empty = _encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16", tmp_path / "e.wav")
    nan = _encode(np.array([0.0, np.nan], np.float32), 16000, "WAV", "FLOAT", tmp_path / "n.wav")
    cases = [
        (wav[: len(wav) // 2], "truncated WAV"),
        (wav[:30], "truncated"),
        (flac[: len(flac) // 2], "undecodable or truncated"),
        (b"definitely not audio" * 50, "undecodable or truncated"),
        (b"", "no audio bytes"),
        (empty, "empty audio"),
        (nan, "non-finite"),
        ("a string", "no audio bytes or array"),
    ]
    for data, reason in cases:
        with pytest.raises(BadRecord, match=f"^shard-3.tar sample 000042: .*{reason}") as info:
            decode_audio(data, "shard-3.tar sample 000042", 16000)
        assert info.value.where == "shard-3.tar sample 000042"


# --------------------------------------------------------------------- cropping


def test_crop_or_pad():
    wave = np.arange(100, dtype=np.float32)
    starts = set()
    for seed in range(30):
        out = crop_or_pad(wave, 30, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, crop_or_pad(wave, 30, np.random.default_rng(seed)))
        start = int(out[0])
        assert 0 <= start <= 70
        np.testing.assert_array_equal(out, np.arange(start, start + 30))
        starts.add(start)
    assert len(starts) > 10
    np.testing.assert_array_equal(crop_or_pad(wave, 30, None), np.arange(35, 65))
    np.testing.assert_array_equal(crop_or_pad(wave, 100, np.random.default_rng(0)), wave)
    for rng in (None, np.random.default_rng(0)):
        padded = crop_or_pad(wave[:10], 16, rng)
        np.testing.assert_array_equal(padded, np.r_[np.arange(10), np.zeros(6)])


# ------------------------------------------------------------------ pp spec


def test_audio_preprocess_shapes_and_normalize(tmp_path):
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, (2 * 44100, 2)).astype(np.float32)
    data = _encode(wave, 44100, "WAV", "PCM_16", tmp_path / "long.wav")
    pp = AudioPreprocess(DEFAULT_AUDIO_PP, train=True)
    assert pp.output_shape == (101, 64) and (pp.n_fft, pp.hop_length) == (400, 160)
    out = pp(data, "long.wav", np.random.default_rng(1))
    assert out.shape == pp.output_shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, pp(data, "long.wav", np.random.default_rng(1)))
    assert not np.array_equal(out, pp(data, "long.wav", np.random.default_rng(2)))
    evaluate = AudioPreprocess(DEFAULT_AUDIO_PP, train=False)  # always the centre crop
    centre = evaluate(data, "long.wav", np.random.default_rng(1))
    np.testing.assert_array_equal(centre, evaluate(data, "long.wav", None))
    np.testing.assert_array_equal(centre, pp(data, "long.wav", None))

    short = "resample(8000) | crop(0.5)|log_mel(40, 32, 8)"
    plain = AudioPreprocess(short, train=False)
    normed = AudioPreprocess(short + "|normalize(-5, 2.5)", train=False)
    assert plain.spec == "resample(8000)|crop(0.5)|log_mel(40, 32, 8)"
    assert plain.output_shape == normed.output_shape == (1 + 4000 // 64, 40)
    clip = _sine(300.0, 8000, 0.3)  # shorter than the crop: zero-padded
    np.testing.assert_allclose(
        normed(clip, "c", None), (plain(clip, "c", None) + 5) / 2.5, rtol=1e-6, atol=1e-6
    )
    with pytest.raises(BadRecord, match="^bad.wav: "):
        plain(b"garbage bytes", "bad.wav", None)


_TAIL = "|crop(1.0)|log_mel(64, 25, 10)"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("resample(16000)" + _TAIL + "|mfcc(13)", "unknown op 'mfcc'"),
        ("resample(16000)|crop(1.0)|log_mel(64, 25)", "op log_mel: .*missing"),
        ("resample(16000)|crop(1.0)|log_mel(64, 25, 10, 0, 8000, 3)", "op log_mel: .*positional"),
        ("resample(-1)" + _TAIL, "op resample: rate must be a positive int"),
        ("resample(16000.0)" + _TAIL, "op resample: rate must be a positive int"),
        ("resample(16000)|crop(0)|log_mel(64, 25, 10)", "op crop: seconds"),
        ("resample(16000)|crop('1s')|log_mel(64, 25, 10)", "op crop: seconds"),
        ("resample(16000)|crop(1.0)|log_mel(256, 25, 10)", "op log_mel: .*cover no FFT bin"),
        ("resample(16000)|crop(1.0)|log_mel(64, 25, 10, f_max=9000)", "op log_mel: .*f_max"),
        ("resample(16000)|crop(1.0)|log_mel(64, 0.05, 10)", "op log_mel: window"),
        ("resample(16000)" + _TAIL + "|normalize(0, 0)", "op normalize: std"),
        ("crop(1.0)|resample(16000)|log_mel(64, 25, 10)", "ops must be resample|crop|log_mel"),
        ("resample(16000)|crop(1.0)", "ops must be"),
        ("resample(16000)" + _TAIL + "|normalize(0, 1)|normalize(0, 1)", "ops must be"),
        ("resample(16000" + _TAIL, "cannot parse op"),
    ],
)
def test_audio_preprocess_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        AudioPreprocess(spec, train=True)
    assert str(info.value).startswith("pp ")


# ------------------------------------------------------------- shapes audio


def _obj(shape=0, color=0, size=1, position=0, dx=0.0, shade=1.0):
    x, y = shapes.GRID[position % 3] + dx, shapes.GRID[position // 3]
    return shapes.SceneObject(shape, color, size, position, x, y, 0.5, shade)


def _harmonic_magnitudes(wave, f0, count, sample_rate=16000):
    """|FFT| at f0 * 1..count of a 1 s clip (1 Hz bins), relative to the fundamental."""
    spectrum = np.abs(np.fft.rfft(wave))
    mags = np.array([spectrum[round(f0 * n)] for n in range(1, count + 1)])
    return mags / mags[0]


def test_synthesize_deterministic_and_bounded():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = shapes.sample_scene(rng, split="train", min_objects=1, max_objects=9)
        wave = shapes_audio.synthesize(scene, sample_rate=16000, duration=1.0)
        assert wave.shape == (16000,) and wave.dtype == np.float32
        assert np.max(np.abs(wave)) <= 1.0
        np.testing.assert_array_equal(
            wave, shapes_audio.synthesize(scene, sample_rate=16000, duration=1.0)
        )
    assert shapes_audio.synthesize(scene, sample_rate=22050, duration=0.5).shape == (11025,)
    loud = [_obj(shape=3, color=c, position=p) for c, p in zip(range(6), range(6), strict=True)]
    wave = shapes_audio.synthesize(loud, sample_rate=16000, duration=1.0)
    assert np.isclose(np.max(np.abs(wave)), 1.0)  # scaled down, not clipped


def test_synthesize_pitch_follows_colour():
    for shape in range(len(shapes.SHAPES)):
        peaks = []
        for color in range(len(shapes.COLORS)):
            wave = shapes_audio.synthesize([_obj(shape, color)], sample_rate=16000, duration=1.0)
            peaks.append(_peak_hz(wave, 16000))
            assert abs(peaks[-1] / shapes_audio.PITCHES[color] - 1) < 0.01
        assert np.all(np.diff(peaks) > 50)  # distinct, rising with the colour index
    detuned = _obj(color=3, dx=shapes.JITTER)
    assert np.isclose(shapes_audio.pitch(detuned), 440.0 * 2 ** (20 / 1200))


def test_synthesize_timbre_by_shape():
    # (2nd, 3rd, 5th harmonic) / fundamental: sine, square, triangle and sawtooth waves
    expected = {
        "circle": (0, 0, 0),
        "square": (0, 1 / 3, 1 / 5),
        "triangle": (0, 1 / 9, 1 / 25),
        "diamond": (1 / 2, 1 / 3, 1 / 5),
    }
    for shape, name in enumerate(shapes.SHAPES):
        wave = shapes_audio.synthesize([_obj(shape, color=0)], sample_rate=16000, duration=1.0)
        ratios = _harmonic_magnitudes(wave, shapes_audio.PITCHES[0], 5)[[1, 2, 4]]
        np.testing.assert_allclose(ratios, expected[name], atol=0.01, err_msg=name)


def test_synthesize_loudness_onset_and_envelope():
    def wave(**kwargs):
        return shapes_audio.synthesize([_obj(**kwargs)], sample_rate=16000, duration=1.0)

    def rms(x):
        return float(np.sqrt(np.mean(x**2)))

    for shape in range(len(shapes.SHAPES)):
        assert rms(wave(shape=shape, size=1, shade=0.8)) > 1.5 * rms(wave(shape=shape, size=0))
    right = wave(position=2)  # top right: onset at half the clip, sustained
    assert np.all(right[:8000] == 0) and rms(right[8000:]) > 0.1
    top, bottom = wave(position=0), wave(position=6)  # sustained vs fast decay
    assert rms(top[12000:]) > 0.15 and rms(bottom[12000:]) < 1e-3
