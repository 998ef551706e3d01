"""Reading one example: bad-record errors, image decoding, caption checks, skip logging.

Every source reads raw fields (encoded image bytes or a uint8 array, caption bytes or
str); the pipeline turns them into a clean record with :func:`decode_image` and
:func:`decode_caption`. Anything wrong with one example raises :class:`BadRecord`,
whose message starts with the example's location (``/data/train.csv row 17``,
``/data/shard-003.tar sample 000042``): the pipeline either skips it (counted in
``data/skipped``, the first occurrences logged) or, with ``data.strict``, re-raises it.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

# Log the first this-many skipped records of each process with their location and reason.
LOG_FIRST_SKIPS = 10


class BadRecord(ValueError):
    """One unreadable example; ``where`` names the file and row/member, ``reason`` what."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def read_file(path: str, where: str, offset: int = 0, size: int | None = None) -> bytes:
    """The bytes of ``path`` (or ``size`` bytes at ``offset``); BadRecord when missing,
    unreadable or shorter than ``size`` (a truncated file)."""
    try:
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            data = f.read() if size is None else f.read(size)
    except FileNotFoundError:
        raise BadRecord(where, f"file {path} does not exist") from None
    except OSError as e:
        raise BadRecord(where, f"cannot read {path}: {e}") from None
    if size is not None and len(data) < size:
        raise BadRecord(where, f"truncated: expected {size} bytes, {path} has {len(data)}")
    if not data:
        raise BadRecord(where, f"{path} is empty")
    return data


def decode_image(data: bytes | np.ndarray, where: str, draft_size: int | None = None) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, WebP, ... anything PIL reads) or an array -> RGB uint8
    [H, W, 3]. Grey images are repeated to 3 channels, alpha is dropped.

    ``draft_size``: let the JPEG decoder downscale by a power of two while both sides
    stay >= draft_size (much faster for large photos that are resized down anyway).
    Raises BadRecord for truncated or undecodable bytes, images over PIL's
    decompression-bomb limit and impossible arrays.
    """
    if isinstance(data, np.ndarray):
        return _rgb_array(data, where)
    if not isinstance(data, bytes | bytearray | memoryview) or not len(data):
        raise BadRecord(where, f"no image bytes (got {type(data).__name__})")
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image = _to_rgb(image)  # decodes; raises on truncated data
    except UnidentifiedImageError:
        raise BadRecord(where, "undecodable or truncated image (not a format PIL reads)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadRecord(
            where, f"undecodable or truncated image ({type(e).__name__}: {e})"
        ) from None
    return np.asarray(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB with the right values: 16/32-bit integer grey (``I;16*``, ``I``)
    is scaled by its bit depth rather than clipped at 255; float grey (``F``) from [0, 1];
    transparency (RGBA, LA, palette or grey with a transparent colour) is composited over
    white; CMYK, YCbCr, palettes convert as PIL does."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, np.float64)
        scale = {"F": 1.0, "I": 2**32 - 1 if values.max(initial=0) > 65535 else 65535}.get(
            image.mode, 65535
        )
        grey = np.clip(np.rint(values / scale * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _rgb_array(image: np.ndarray, where: str) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise BadRecord(
            where, f"image array must be uint8 [H, W, 1|3|4], got {image.dtype} {list(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadRecord(where, f"empty image {list(image.shape)}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def decode_caption(caption: str | bytes | None, where: str) -> str:
    """Caption bytes/str -> stripped str; BadRecord if missing, empty or not UTF-8.

    A str carrying surrogate escapes (from a file decoded with ``surrogateescape``)
    counts as not UTF-8.
    """
    if caption is None:
        raise BadRecord(where, "no caption")
    if isinstance(caption, bytes | bytearray | np.bytes_):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecord(where, f"caption is not valid UTF-8 ({e})") from None
    elif not isinstance(caption, str):
        raise BadRecord(where, f"caption must be text, got {type(caption).__name__}")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord(where, "caption is not valid UTF-8") from None
    caption = caption.strip()
    if not caption:
        raise BadRecord(where, "empty caption")
    return caption


def parse_label(value: object, where: str) -> int:
    """A label field (int, or text such as b"3" / "3") -> int >= 0; BadRecord otherwise."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise BadRecord(where, f"label {value!r} is not an integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise BadRecord(where, f"label must be an int >= 0, got {value!r}")
    return int(value)


class SkipLog:
    """Logs the first ``LOG_FIRST_SKIPS`` skipped records of this process (thread-safe)."""

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, error: BadRecord) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        if count <= LOG_FIRST_SKIPS:
            suffix = " (further skips are counted in data/skipped, not logged)"
            logging.warning(
                "Skipping bad example %s%s", error, suffix if count == LOG_FIRST_SKIPS else ""
            )


SKIP_LOG = SkipLog()
