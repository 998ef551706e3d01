"""``csv:PATH`` — a CSV/TSV of image paths and captions (the open_clip convention).

The first line names the columns; ``.tsv`` files are tab-separated, others
comma-separated (standard CSV quoting). The image column (``data.csv_image_key``,
default ``filepath``) holds paths, relative ones resolved against the CSV's folder;
the caption column (``data.csv_caption_key``, default ``title``) the text; an optional
label column (an eval's ``label_key``; by default ``label`` when present) integer class
ids. A missing named column is an error naming the file, the key and the columns it
has. Row problems (too few fields, a missing or unreadable image, an empty or
non-UTF-8 caption, a non-integer label) are :class:`~.records.BadRecord` errors naming
``PATH row R (line L)``, raised when the row is read.

With field requests (:mod:`.fields`) the record holds one field per request instead:
a request's column is its ``name``, by default the image column for key ``image``, the
caption column for ``text`` / ``caption`` and the key itself for any other key. A
``binary`` request's column holds file paths (read like the images), another's its
string. A request whose column the header lacks is not served (``provides``); a served
column that is missing or empty in a row is a BadRecord naming the column.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord, parse_label, read_file

# Record keys a source always fills: no field request may use them.
RESERVED_KEYS = ("label", "id", "where")


def checked_requests(requests: Sequence[FieldRequest]) -> tuple[FieldRequest, ...]:
    """``requests`` as a tuple; ValueError for a repeated or reserved key."""
    requests = tuple(requests)
    keys = [r.key for r in requests]
    for key in keys:
        if key in RESERVED_KEYS or keys.count(key) > 1:
            raise ValueError(
                f"field request key {key!r}: repeated, or reserved ({list(RESERVED_KEYS)}); "
                f"the requests are {requests}"
            )
    return requests


def is_empty(value: Any) -> bool:
    """True for None and for text or bytes that are empty or only whitespace."""
    return value is None or (
        isinstance(value, str | bytes | bytearray | np.bytes_) and not value.strip()
    )


class StringColumn:
    """Many strings in one bytes blob + offsets (compact, fast to pickle to workers);
    None entries allowed. Strings round-trip with ``surrogateescape``."""

    def __init__(self, values: Sequence[str | None]):
        encoded = [b"" if v is None else v.encode("utf-8", "surrogateescape") for v in values]
        self._present = np.array([v is not None for v in values], bool)
        self._offsets = np.zeros(len(values) + 1, np.int64)
        self._offsets[1:] = np.cumsum([len(e) for e in encoded])
        self._blob = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._present)

    def __getitem__(self, i: int) -> str | None:
        if not self._present[i]:
            return None
        return self._blob[self._offsets[i] : self._offsets[i + 1]].decode(
            "utf-8", "surrogateescape"
        )


class CsvSource:
    """Random access to the rows of one CSV/TSV file.

    ``source[i]`` -> {"image": encoded bytes, "caption": str (may carry surrogate escapes
    for non-UTF-8 bytes), "label": int (-1 without a label column), "id": i, "where":
    location}; raises BadRecord for a bad row. With ``requests``: {request.key: file
    bytes (``binary``) or the column's str, for each request in ``provides``, "label",
    "id", "where"}.

    Attributes: ``provides`` (the record keys served: ``image`` and ``caption`` without
    requests), ``available_fields`` (the header's columns).
    """

    classnames = None
    templates = None

    def __init__(
        self,
        path: str,
        *,
        image_key: str,
        caption_key: str,
        label_key: str | None,
        requests: Sequence[FieldRequest] | None = None,
    ):
        self.path = os.path.abspath(path)
        self._root = os.path.dirname(self.path)
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
        except OSError as e:
            raise ValueError(f"csv:{path}: cannot read the CSV file: {e}") from None
        text = text.removeprefix("\ufeff")
        delimiter = "\t" if self.path.endswith(".tsv") else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise ValueError(f"csv:{path}: the file is empty (expected a header line)")
        self.available_fields = header

        def column(key: str, config_key: str) -> str:
            if key not in header:
                raise ValueError(
                    f"csv:{path}: no column {key!r} ({config_key}); the header has {header}"
                )
            return key

        self.requests = None if requests is None else checked_requests(requests)
        # (record key, column, binary) of each field served.
        self._fields: list[tuple[str, str, bool]]
        if self.requests is None:
            self._fields = [
                ("image", column(image_key, "config data.csv_image_key"), True),
                ("caption", column(caption_key, "config data.csv_caption_key"), False),
            ]
        else:
            default = {"image": image_key, "text": caption_key, "caption": caption_key}
            named = [(r.key, r.name or default.get(r.key, r.key), r.binary) for r in self.requests]
            self._fields = [f for f in named if f[1] in header]
        self.provides = frozenset(key for key, _, _ in self._fields)
        if label_key is not None:
            self._label = column(label_key, "the eval's label_key")
        else:
            self._label = "label" if "label" in header else None
        self.keys = (image_key, caption_key, self._label)
        names = list(dict.fromkeys([c for _, c, _ in self._fields] + [self._label]))
        indices = {name: header.index(name) for name in names if name is not None}
        values: dict[str, list[str | None]] = {name: [] for name in indices}
        lines = []
        for row in reader:
            if not row:  # blank line
                continue
            lines.append(reader.line_num)
            for name, index in indices.items():
                values[name].append(row[index] if index < len(row) else None)
        self._columns = {name: StringColumn(v) for name, v in values.items()}
        self._lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self._lines)

    def where(self, index: int) -> str:
        return f"{self.path} row {index + 1} (line {self._lines[index]})"

    def _read_path(self, value: str, column: str, where: str) -> bytes:
        """The bytes of the file a ``column`` field names (relative to the CSV's folder)."""
        path = value.strip()
        if not path:
            raise BadRecord(where, f"empty {column!r} field")
        return read_file(path if os.path.isabs(path) else os.path.join(self._root, path), where)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        where = self.where(index)
        values = {name: col[index] for name, col in self._columns.items()}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise BadRecord(where, f"row has no field for column(s) {missing}")
        record: dict[str, Any] = {}
        for key, column, binary in self._fields:
            value = values[column]
            if binary:
                record[key] = self._read_path(value, column, where)
            elif self.requests is not None and is_empty(value):
                raise BadRecord(where, f"empty {column!r} field")
            else:
                record[key] = value
        record["label"] = -1 if self._label is None else parse_label(values[self._label], where)
        return {**record, "id": index, "where": where}

    def __repr__(self) -> str:
        if self.requests is None:
            return f"CsvSource({self.path!r}, keys={self.keys}, rows={len(self)})"
        return (
            f"CsvSource({self.path!r}, keys={self.keys}, requests={self.requests}, "
            f"rows={len(self)})"
        )
