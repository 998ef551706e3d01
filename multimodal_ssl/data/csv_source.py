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
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.records import BadRecord, parse_label, read_file


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
    location}; raises BadRecord for a bad row.
    """

    classnames = None
    templates = None

    def __init__(self, path: str, *, image_key: str, caption_key: str, label_key: str | None):
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

        def column(key: str, config_key: str) -> int:
            if key not in header:
                raise ValueError(
                    f"csv:{path}: no column {key!r} ({config_key}); the header has {header}"
                )
            return header.index(key)

        cols = {
            "image": column(image_key, "config data.csv_image_key"),
            "caption": column(caption_key, "config data.csv_caption_key"),
        }
        if label_key is not None:
            cols["label"] = column(label_key, "the eval's label_key")
        elif "label" in header:
            cols["label"] = header.index("label")
        self.keys = (image_key, caption_key, header[cols["label"]] if "label" in cols else None)
        values: dict[str, list[str | None]] = {name: [] for name in cols}
        lines = []
        for row in reader:
            if not row:  # blank line
                continue
            lines.append(reader.line_num)
            for name, index in cols.items():
                values[name].append(row[index] if index < len(row) else None)
        self._columns = {name: StringColumn(v) for name, v in values.items()}
        self._lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self._lines)

    def where(self, index: int) -> str:
        return f"{self.path} row {index + 1} (line {self._lines[index]})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        where = self.where(index)
        fields = {name: col[index] for name, col in self._columns.items()}
        missing = [
            self.keys[i]
            for i, n in enumerate(("image", "caption", "label"))
            if n in fields and fields[n] is None
        ]
        if missing:
            raise BadRecord(where, f"row has no field for column(s) {missing}")
        image_path = fields["image"].strip()
        if not image_path:
            raise BadRecord(where, f"empty {self.keys[0]!r} field")
        if not os.path.isabs(image_path):
            image_path = os.path.join(self._root, image_path)
        label = parse_label(fields["label"], where) if "label" in fields else -1
        return {
            "image": read_file(image_path, where),
            "caption": fields["caption"],
            "label": label,
            "id": index,
            "where": where,
        }

    def __repr__(self) -> str:
        return f"CsvSource({self.path!r}, keys={self.keys}, rows={len(self)})"
