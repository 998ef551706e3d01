"""``tfds:NAME[:VERSION][:SPLIT]`` — a prepared TFDS dataset, read with random access
through ``tfds`` array_record data sources (no TensorFlow needed).

NAME may carry a config (``coco_captions/2017``); SPLIT accepts TFDS slicing
(``train[:90%]``). The dataset must be prepared in the array_record format in
``data.tfds_dir`` (default: TFDS's own, ``~/tensorflow_datasets``), e.g.
``tfds build NAME --file_format=array_record --data_dir=DIR``; nothing is downloaded.
A catalogue dataset whose builder code needs TensorFlow (``coco_captions``) is opened
from its prepared files alone.

Features: the image (``data.tfds_image_key``, default ``image``) is an ``Image``
feature (encoded bytes, decoded by the pipeline) or a uint8 ``Tensor`` [H, W, C]; the
caption (``data.tfds_caption_key``, default ``caption``) a ``Text`` feature; the label
(the eval's ``label_key``, by default ``label`` when present) an int, whose
``ClassLabel`` names become the source's ``classnames``. Nested features are named
with ``/`` (``captions/text``); of a sequence the first element is used (the whole
list for a request with ``sequence``). A dataset
without the caption feature can be evaluated (zero-shot) but not trained on
(``has_captions`` is False).

With field requests (:mod:`.fields`) the record holds one field per request instead: the
value of the feature ``name`` as stored (``Image`` features undecoded), by default the
image feature for key ``image``, the caption feature for ``text`` / ``caption`` and the
key itself for any other key. A request whose feature the dataset lacks is not served
(``provides``); a served value that is missing or empty text is a BadRecord naming the
feature.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.csv_source import checked_requests, is_empty
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord

_VERSION = re.compile(r"\d+\.\d+\.\d+")


def parse_tfds_spec(rest: str, default_split: str) -> tuple[str, str]:
    """``NAME[:VERSION][:SPLIT]`` -> (name with version, split); colons inside the
    brackets of a sliced split do not separate."""
    parts = re.split(r":(?![^\[]*\])", rest)
    name = parts.pop(0)
    if parts and _VERSION.fullmatch(parts[0]):
        name = f"{name}:{parts.pop(0)}"
    if not name or len(parts) > 1:
        raise ValueError(f"tfds:{rest}: expected 'tfds:NAME[:VERSION][:SPLIT]'")
    return name, (parts[0] if parts else default_split)


def _get(record: dict[str, Any], key: str, whole: bool = False) -> Any:
    """The feature ``key`` (``/``-nested) of ``record``: a sequence's first element
    (None if empty), or with ``whole`` the list of its elements (a scalar as [it])."""
    value: Any = record
    for part in key.split("/"):
        value = value[part]
    is_seq = isinstance(value, list | tuple) or (
        isinstance(value, np.ndarray) and value.dtype == object
    )
    if whole:
        return list(value) if is_seq else [value]
    if is_seq:
        value = value[0] if len(value) else None
    return value


def _builder(tfds, name: str, data_dir: str | None):
    """``tfds.builder``; a catalogue builder whose code needs TensorFlow (its ``_info``
    uses ``tf`` dtypes: ``coco_captions``) is built from the prepared files instead."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except ModuleNotFoundError as e:
        try:
            return tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
        except Exception:  # report the first cause: the builder code needs TF
            raise ValueError(
                f"tfds:{name}: its builder code needs a module that is not installed ({e}) "
                f"and no prepared copy was found in {data_dir or '(TFDS default)'} "
                "(config data.tfds_dir)"
            ) from None


class TfdsSource:
    """``source[i]`` -> {"image": bytes or uint8 array, "caption": bytes (b"" without a
    caption feature), "label": int (-1 without one), "id": i, "where": ...}. With
    ``requests``: {request.key: the feature's value, for each request in ``provides``,
    "label", "id", "where"}.

    Attributes: ``provides`` (the record keys served: ``image`` and ``caption`` without
    requests), ``available_fields`` (the top-level feature names).
    """

    templates = None

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None,
        image_key: str,
        caption_key: str,
        label_key: str | None,
        requests: Sequence[FieldRequest] | None = None,
    ):
        import tensorflow_datasets as tfds  # local: heavy import, only for tfds: specs

        self.name, self.split = name, split
        data_dir = os.path.expanduser(data_dir) if data_dir else data_dir  # "~/..." from flags
        try:
            builder = _builder(tfds, name, data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"tfds:{name}: no such dataset in data dir {data_dir or '(TFDS default)'} "
                f"(config data.tfds_dir) nor in the TFDS catalogue"
            ) from None
        if not builder.is_prepared():
            raise ValueError(
                f"tfds:{name}: not prepared in {builder.data_dir} (config data.tfds_dir); "
                f"prepare it with `tfds build {name} --file_format=array_record`; "
                f"nothing is downloaded at training time"
            )
        if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise ValueError(
                f"tfds:{name}: prepared as {builder.info.file_format.value} in "
                f"{builder.data_dir}; random access needs --file_format=array_record"
            )
        features = builder.info.features

        def feature(key: str, what: str) -> Any:
            try:
                return _get(features, key)
            except (KeyError, TypeError):
                raise ValueError(
                    f"tfds:{name}: no feature {key!r} ({what}); features: {sorted(features)}"
                ) from None

        self.available_fields = sorted(features)
        self.requests = None if requests is None else checked_requests(requests)
        # (record key, feature name, whole sequence) of each request served.
        self._fields: list[tuple[str, str, bool]] = []
        if self.requests is None:
            served = {image_key: feature(image_key, "config data.tfds_image_key")}
            self.provides = frozenset({"image", "caption"})
        else:
            default = {"image": image_key, "text": caption_key, "caption": caption_key}
            served = {}
            for r in self.requests:
                name = r.name or default.get(r.key, r.key)
                try:
                    served[name] = _get(features, name)
                except (KeyError, TypeError):
                    continue
                self._fields.append((r.key, name, r.sequence))
            self.provides = frozenset(key for key, _, _ in self._fields)
        self.image_key, self.caption_key = image_key, caption_key
        self.has_captions = caption_key.split("/")[0] in features
        if label_key is None and "label" in features:
            label_key = "label"
        label = feature(label_key, "the eval's label_key") if label_key else None
        self.label_key = label_key
        self.classnames = list(label.names) if isinstance(label, tfds.features.ClassLabel) else None
        decoders = {
            name: tfds.decode.SkipDecoding()
            for name, f in served.items()
            if isinstance(f, tfds.features.Image)
        }
        try:
            self._data = builder.as_data_source(split=split, decoders=decoders or None)
        except ValueError as e:
            raise ValueError(f"tfds:{name}:{split}: {e}") from None

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        where = f"tfds:{self.name}:{self.split} example {index}"
        try:
            record = self._data[index]
        except (ValueError, OSError, KeyError) as e:
            raise BadRecord(where, f"cannot read or parse the example ({e})") from None
        if self.requests is None:
            fields = {
                "image": _get(record, self.image_key),
                "caption": _get(record, self.caption_key) if self.has_captions else b"",
            }
        else:
            fields = {}
            for key, name, whole in self._fields:
                fields[key] = _get(record, name, whole)
                if (not fields[key]) if whole else is_empty(fields[key]):
                    raise BadRecord(where, f"empty feature {name!r}")
        label = _get(record, self.label_key) if self.label_key else -1
        return {**fields, "label": int(label), "id": index, "where": where}

    def __repr__(self) -> str:
        requests = "" if self.requests is None else f", requests={self.requests}"
        return f"TfdsSource({self.name!r}, split={self.split!r}{requests}, examples={len(self)})"
