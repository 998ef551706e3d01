"""Every image mode PIL decodes becomes the right RGB: 16-bit grey scaled (not clipped),
transparency composited over white, palettes and CMYK converted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from multimodal_ssl.data.records import decode_image


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("dtype, fmt", [(np.uint16, "PNG"), (np.int32, "TIFF")])
def test_16_bit_grey_is_scaled_to_8_bits(dtype, fmt):
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(dtype)  # 0 .. 65472, I;16 / I
    out = decode_image(_png(Image.fromarray(grey), fmt), "g16")
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], np.rint(grey / 65535 * 255).astype(np.uint8))
    assert (out == 255).mean() < 0.01  # was 99.6 % when clipped


def test_transparency_is_composited_over_white():
    palette = Image.new("P", (2, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([1, 0, 0, 1])
    palette.info["transparency"] = 0  # red is the transparent colour
    out = decode_image(_png(palette), "p")
    assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [255, 255, 255]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)  # opaque blue
    rgba[1, 1] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")), "rgba")
    assert out[0, 0].tolist() == [0, 0, 255] and out[0, 1].tolist() == [255, 255, 255]
    assert 120 <= out[1, 1, 0] <= 135


def test_cmyk_and_la_convert():
    out = decode_image(_png(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "JPEG"), "cmyk")
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60 and out[0, 0, 2] < 60  # red
    la = Image.fromarray(np.array([[[100, 255]]], np.uint8), "LA")
    assert decode_image(_png(la), "la")[0, 0].tolist() == [100, 100, 100]
