"""Per-modality preprocessing: what turns one record field into one model input.

A modality's *kind* decides how its field is read (:data:`KINDS`): by name for the
known modalities (``image``, ``text``, ``depth``, ``audio``), else from its tower type
(``vit`` -> image, ``text`` -> text, ``audio`` -> audio, ``mlp``/``sequence`` ->
vector). Each kind has a :class:`Processor`:

=========  ===========================  ==========================================
kind       field (default)              model input per example
=========  ===========================  ==========================================
image      ``image``                    f32 [S, S, 3]   (``data.pp_train`` / ``pp_eval``)
depth      ``depth``                    f32 [S, S, 1]   (``data.pp.depth``)
text       ``caption``                  i32 [L]         (``data.tokenizer``, ``max_text_len``)
audio      ``audio``                    f32 [frames, n_mels] (``data.pp.audio``)
vector     the modality's name          f32 [...]       (``data.pp.<m>``: ``vector(d, ...)``)
=========  ===========================  ==========================================

An image tower with ``naflex_max_patches`` set reads NaFlex dicts instead
(``{"patches", "mask", "spatial_shapes"}``, :mod:`.naflex_pp`).
``data.fields.<modality>`` names another field. A processor works in three stages so
the expensive part runs in the reader threads: ``read`` (one example, any thread; raises
:class:`~.records.BadRecord`), ``collate`` (a list of read values -> one array) and
``finish`` (the whole batch in the main process: image value ops).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.audio import DEFAULT_AUDIO_PP, AudioPreprocess
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.preprocess import Preprocess
from multimodal_ssl.data.records import BadRecord, decode_caption, decode_image
from multimodal_ssl.data.tokenizers import Tokenizer, get_tokenizer

KINDS = ("image", "depth", "text", "audio", "vector")
_KIND_OF_TOWER = {
    "vit": "image",
    "text": "text",
    "audio": "audio",
    "mlp": "vector",
    "sequence": "vector",
}
_DEFAULT_FIELD = {"image": "image", "depth": "depth", "text": "caption", "audio": "audio"}
DEFAULT_DEPTH_PP = "resize_small|center_crop|value_range(-1, 1)"


def modality_kind(modality: str, tower_type: str) -> str:
    """The kind of ``modality`` (see the module docstring)."""
    if modality in KINDS:
        return modality
    if tower_type in _KIND_OF_TOWER:
        return _KIND_OF_TOWER[tower_type]
    raise ValueError(
        f"config.model.towers.{modality}: cannot tell how to read modality {modality!r} "
        f"(tower type {tower_type!r}); name it one of {list(KINDS)}"
    )


class Processor(abc.ABC):
    """Reads one modality's field (see the module docstring)."""

    kind: str

    def __init__(self, modality: str, name: str | None):
        self.modality, self.name = modality, name

    @property
    def reads(self) -> str:
        """The modality whose record field this reads (itself; a view: its modality)."""
        return self.modality

    @property
    def field(self) -> str:
        """The field read, for messages: ``data.fields.<m>`` or the kind's usual name."""
        return self.name or _DEFAULT_FIELD.get(self.kind, self.modality)

    @property
    def request(self) -> FieldRequest:
        """What the sources are asked for: the record key is the modality name; the field
        ``data.fields.<m>``, or (None) each source format's default for it."""
        return FieldRequest(self.modality, self.name, binary=self.kind != "text")

    @abc.abstractmethod
    def read(self, value: Any, where: str, rng: np.random.Generator) -> Any:
        """One raw field value -> its per-example form; BadRecord when unreadable."""

    @abc.abstractmethod
    def example_shape(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one example's model input (after ``finish``)."""

    def absent(self) -> np.ndarray:
        """The ``read`` form of a missing field (zeros; masked out of losses and evals)."""
        shape, dtype = self.example_shape()
        return np.zeros(shape, dtype)

    def collate(self, values: Sequence[Any]) -> np.ndarray | dict[str, np.ndarray]:
        """Read values -> the batch entry ``[b, ...]`` (or ``{batch key: [b, ...]}`` for a
        processor that adds fields besides its modality's)."""
        return np.stack(values)

    def finish(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def finish_into(self, batch: dict[str, np.ndarray]) -> None:
        """Runs the batch stage on this processor's entries of ``batch``, in place."""
        batch[self.modality] = self.finish(batch[self.modality])

    def fingerprint(self) -> str:
        """A stable description (resume checks that the pipeline did not change)."""
        return f"{self.modality}:{self.kind}:{self.name}"


class ImageProcessor(Processor):
    """Decoded images -> ``pp`` geometric ops (uint8, reader threads) -> value op (batch)."""

    kind = "image"
    channels = 3

    def __init__(self, modality: str, field: str | None, spec: str, image_size: int):
        super().__init__(modality, field)
        self.preprocess = Preprocess(spec, image_size)

    def _decode(self, value: Any, where: str) -> np.ndarray:
        return decode_image(value, where, self.preprocess.draft_size)

    def read(self, value, where, rng):
        return self._process(self.preprocess, self._decode(value, where), where, rng)

    def _process(self, preprocess: Preprocess, decoded: Any, where: str, rng) -> np.ndarray:
        image = preprocess(decoded, rng)
        size = preprocess.image_size
        if image.shape[:2] != (size, size):
            raise ValueError(
                f"{where}: {self.modality} must be uint8 [{size}, {size}, {self.channels}] after "
                f"the ops {preprocess.spec!r}, got {image.dtype} {list(image.shape)}; end "
                f"them with a fixed-size op such as center_crop or random_resized_crop"
            )
        return image[..., : self.channels]

    def absent(self) -> np.ndarray:
        size = self.preprocess.image_size
        return np.zeros((size, size, self.channels), np.uint8)

    def example_shape(self):
        size = self.preprocess.image_size
        return (size, size, self.channels), np.dtype(np.float32)

    def finish(self, batch):
        return self.preprocess.normalize(batch)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:{self.preprocess!r}"


class MultiCropProcessor(ImageProcessor):
    """An image processor that also cuts ``count`` local crops of each decoded image with
    the ops ``local_spec`` at ``local_size`` (self-distillation, ``config.distill``), drawn
    after the global view's ops from the same per-example generator. Batch entries:
    ``<m>`` f32 [b, S, S, 3] and ``<m>_local`` f32 [b, count, h, h, 3] (both through their
    spec's value op)."""

    def __init__(
        self,
        modality: str,
        field: str | None,
        spec: str,
        image_size: int,
        *,
        local_spec: str,
        local_size: int,
        count: int,
    ):
        super().__init__(modality, field, spec, image_size)
        self.local = Preprocess(local_spec, local_size)
        self.count = count
        self.local_key = f"{modality}_local"

    def read(self, value, where, rng):
        decoded = self._decode(value, where)
        image = self._process(self.preprocess, decoded, where, rng)
        crops = [self._process(self.local, decoded, where, rng) for _ in range(self.count)]
        return image, np.stack(crops)

    def absent(self):
        size = self.local.image_size
        crops = np.zeros((self.count, size, size, self.channels), np.uint8)
        return super().absent(), crops

    def collate(self, values):
        return {
            self.modality: np.stack([v[0] for v in values]),
            self.local_key: np.stack([v[1] for v in values]),
        }

    def finish_into(self, batch):
        super().finish_into(batch)
        batch[self.local_key] = self.local.normalize(batch[self.local_key])

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:local={self.count}x{self.local!r}"


class DepthProcessor(ImageProcessor):
    """Depth maps (float [H, W] in [0, 1], or an encoded single-channel image) -> one
    channel: quantised to uint8 and run through the image ops (so crops and flips match
    the image pipeline's), ``[S, S, 1]``."""

    kind = "depth"
    channels = 1

    def _decode(self, value, where):
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            if value.ndim == 3 and value.shape[-1] == 1:
                value = value[..., 0]
            if value.ndim != 2 or not np.all(np.isfinite(value)):
                raise BadRecord(where, f"depth map must be finite [H, W], got {value.shape}")
            value = np.rint(np.clip(value, 0.0, 1.0) * 255).astype(np.uint8)
        return super()._decode(value, where)


class TextProcessor(Processor):
    """Captions -> checked str (reader threads) -> token ids i32 [b, L] (collate)."""

    kind = "text"

    def __init__(self, modality: str, field: str | None, tokenizer: Tokenizer):
        super().__init__(modality, field)
        self.tokenizer = tokenizer

    def read(self, value, where, rng):
        return decode_caption(value, where)

    def absent(self) -> str:
        return ""

    def collate(self, values):
        return self.tokenizer.encode(list(values))

    def example_shape(self):
        return (self.tokenizer.max_len,), np.dtype(np.int32)


class AudioProcessor(Processor):
    """Audio files / waveforms -> decode, resample, crop, log-mel (reader threads)."""

    kind = "audio"

    def __init__(self, modality: str, field: str | None, spec: str, train: bool):
        super().__init__(modality, field)
        self.preprocess = AudioPreprocess(spec, train=train)
        self.train = train

    def read(self, value, where, rng):
        return self.preprocess(value, where, rng if self.train else None)

    def example_shape(self):
        return tuple(self.preprocess.output_shape), np.dtype(np.float32)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:{self.preprocess.spec}:train={self.train}"


class VectorProcessor(Processor):
    """Arrays (or ``.npy`` bytes) taken as they are: f32 of a fixed ``shape``."""

    kind = "vector"

    def __init__(self, modality: str, field: str | None, shape: Sequence[int]):
        super().__init__(modality, field)
        self.shape = tuple(shape)

    def read(self, value, where, rng):
        if isinstance(value, bytes | bytearray):
            import io

            try:
                value = np.load(io.BytesIO(value), allow_pickle=False)
            except (ValueError, OSError) as e:
                raise BadRecord(where, f"{self.field}: not a .npy array ({e})") from None
        value = np.asarray(value, np.float32)
        if value.shape != self.shape or not np.all(np.isfinite(value)):
            raise BadRecord(
                where, f"{self.field}: expected finite f32 {list(self.shape)}, got {value.shape}"
            )
        return value

    def example_shape(self):
        return self.shape, np.dtype(np.float32)


class ViewProcessor(Processor):
    """A second view (``data.views``): ``processor``'s field read again by ``processor``,
    with the next draws of the example's rng, so random ops augment it independently."""

    def __init__(self, view: str, processor: Processor):
        super().__init__(view, processor.name)
        self.base = processor
        self.kind = processor.kind

    @property
    def reads(self) -> str:
        return self.base.modality

    @property
    def field(self) -> str:
        return self.base.field

    @property
    def request(self) -> FieldRequest:
        return self.base.request

    def read(self, value, where, rng):
        return self.base.read(value, where, rng)

    def absent(self):
        return self.base.absent()

    def example_shape(self):
        return self.base.example_shape()

    def collate(self, values):
        return self.base.collate(values)

    def finish(self, batch):
        return self.base.finish(batch)

    def fingerprint(self) -> str:
        return f"{self.modality}:view:{self.base.fingerprint()}"


def vector_shape(spec: str) -> tuple[int, ...]:
    """``"vector(16)"`` / ``"vector(100, 6)"`` -> the per-example shape of a vector
    modality; ValueError otherwise."""
    import ast

    try:
        node = ast.parse(spec.strip(), mode="eval").body
        ok = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "vector"
        shape = tuple(ast.literal_eval(a) for a in node.args) if ok else ()
    except (SyntaxError, ValueError):
        shape = ()
    if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(
            f"{spec!r}: a vector modality needs its per-example shape, e.g. 'vector(16)' or "
            "'vector(100, 6)' (steps, channels)"
        )
    return shape


def pp_spec(data_config: Mapping[str, Any], modality: str, default: str) -> str:
    """``data.pp.<modality>`` or ``default``."""
    pp = data_config.get("pp") or {}
    return pp.get(modality, default) if hasattr(pp, "get") else default


def make_processors(
    config: Any, *, train: bool, tokenizer: Tokenizer | None = None
) -> dict[str, Processor]:
    """One processor per tower of ``config.model.towers``, reading ``config.data``.

    ``train``: the training pipeline (``data.pp_train``, random crops, and the second
    views of ``data.views``) or the eval one.
    ``tokenizer``: the text modalities' (default: ``data.tokenizer`` at ``max_text_len``).
    Raises ValueError naming the config key of a bad spec or field.
    """
    from multimodal_ssl import distill  # local: imports jax; grain workers never call this
    from multimodal_ssl.data.naflex_pp import NaFlexProcessor, naflex_settings

    data = config.data
    fields = data.get("fields") or {}
    out: dict[str, Processor] = {}
    for modality, tower in config.model.towers.items():
        kind = modality_kind(modality, tower["type"])
        field = fields.get(modality)
        key = f"config.data.pp.{modality}"
        try:
            if kind == "image":
                key = f"config.model.towers.{modality}.naflex_max_patches"
                naflex = naflex_settings(config, modality, tower)  # (patch, N) or None
                key = f"config.data.{'pp_train' if train else 'pp_eval'}"
                spec = data.pp_train if train else data.pp_eval
                local = distill.local_views(config) if train else None
                if naflex is not None:
                    out[modality] = NaFlexProcessor(
                        modality, field, spec, data.image_size,
                        patch=naflex[0], max_patches=naflex[1],
                    )
                elif local is not None and local[0] == modality:
                    key = "config.distill.local_pp"
                    out[modality] = MultiCropProcessor(
                        modality, field, spec, data.image_size,
                        local_spec=local[1], local_size=local[2], count=local[3],
                    )
                else:
                    out[modality] = ImageProcessor(modality, field, spec, data.image_size)
            elif kind == "depth":
                spec = pp_spec(data, modality, DEFAULT_DEPTH_PP)
                out[modality] = DepthProcessor(modality, field, spec, data.image_size)
            elif kind == "text":
                key = "config.data.tokenizer"
                tok = tokenizer or get_tokenizer(data.tokenizer, data.max_text_len)
                out[modality] = TextProcessor(modality, field, tok)
            elif kind == "audio":
                spec = pp_spec(data, modality, DEFAULT_AUDIO_PP)
                out[modality] = AudioProcessor(modality, field, spec, train)
            else:
                out[modality] = VectorProcessor(
                    modality, field, vector_shape(pp_spec(data, modality, ""))
                )
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    from multimodal_ssl import locca  # local: imports jax, as distill

    if train and locca.enabled(config):
        tok = tokenizer or get_tokenizer(data.tokenizer, data.max_text_len)
        out["locca"] = locca.make_processor(config.decoder, tok)
    if train:
        for view, modality in (data.get("views") or {}).items():
            if modality not in out:
                raise ValueError(f"config.data.views.{view}: {modality!r} has no tower")
            out[view] = ViewProcessor(view, out[modality])
    return out


def check_pp_config(config: Any) -> None:
    """Builds every processor (train and eval) once: ValueError naming the bad key."""
    for subtree in ("pp", "fields"):
        for key in config.data.get(subtree) or {}:
            if key not in config.model.towers:
                raise ValueError(
                    f"config.data.{subtree}.{key}: no tower for modality {key!r} "
                    f"(towers: {sorted(config.model.towers)})"
                )
            tower_type = config.model.towers[key]["type"]
            if subtree == "pp" and modality_kind(key, tower_type) == "image":
                raise ValueError(
                    f"config.data.pp.{key}: image towers are pre-processed by "
                    "config.data.pp_train and config.data.pp_eval; set those instead"
                )
    for train in (True, False):
        make_processors(config, train=train, tokenizer=_NoTokenizer(config.data.max_text_len))


class _NoTokenizer(Tokenizer):
    """Stands in for the tokenizer when only specs are checked (no file is opened)."""

    vocab_size = 1

    def _ids(self, text):
        raise NotImplementedError

    def _text(self, ids):
        raise NotImplementedError
