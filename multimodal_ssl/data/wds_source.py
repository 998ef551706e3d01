"""``wds:PATTERN`` — WebDataset tar shards, read with random access (no webdataset
package needed).

PATTERN: shard paths with brace ranges/alternatives (``/data/cc-{000..099}.tar``,
``/data/{a,b}.tar``), shell globs (``/data/*.tar``) and ``::`` between several
patterns. A sample is the run of members sharing a key (the path up to the first
``.`` of the file name); its image is the first of the ``jpg``/``jpeg``/``png``/``webp``
members, its caption the ``txt`` member or else the ``caption`` field of its ``json``
member, its label the ``cls`` member (or the member named by the eval's ``label_key``),
else that key of the ``json`` member, else -1.

At open every shard's tar headers are indexed (offsets only, no image data read).
Missing, empty, unreadable or truncated shards are ``problems``: counted skips at
open, or errors with ``data.strict``; a sample whose image is missing, truncated or
undecodable, or whose caption is missing/empty/not UTF-8, raises
:class:`~.records.BadRecord` (``SHARD sample KEY: ...``) when read.
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from typing import Any

import numpy as np

from multimodal_ssl.data.csv_source import StringColumn
from multimodal_ssl.data.records import BadRecord, parse_label, read_file

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_ROLES = ("image", "txt", "json", "label")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> [a00bx, a00by, a01bx, ...]; ranges keep zero padding."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        lo, hi = ranged.groups()
        width = len(lo) if lo.startswith("0") else 0
        if int(hi) < int(lo):
            raise ValueError(f"brace range {{{body}}} in {pattern!r} is empty")
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for option in options for p in expand_braces(head + option + tail)]


def expand_shards(spec: str) -> list[str]:
    """All shard paths of a PATTERN (``::``-joined patterns, braces, globs), in order."""
    paths: list[str] = []
    for part in spec.split("::"):
        for path in expand_braces(part):
            matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
            paths.extend(matches)
    return paths


def _split_key(name: str) -> tuple[str, str] | None:
    """Member path -> (sample key, lower-case extension) by the WebDataset rule."""
    directory, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


class WdsSource:
    """Random access to the samples of WebDataset shards.

    ``source[i]`` -> {"image": encoded bytes, "caption": bytes or str, "label": int,
    "id": i, "where": "SHARD sample KEY"}; BadRecord for a bad sample. ``problems``:
    messages about shards that contributed nothing or were cut short.
    """

    classnames = None
    templates = None

    def __init__(self, spec: str, *, label_key: str | None):
        self.spec = spec
        self.label_ext = label_key or "cls"
        self.label_field = label_key or "label"
        self.shards = expand_shards(spec)
        if not self.shards:
            raise ValueError(f"wds:{spec}: the pattern matches no shard files")
        self.problems: list[str] = []
        shard_ids, keys = [], []
        members: dict[str, list[tuple[int, int]]] = {role: [] for role in _ROLES}
        for shard_id, path in enumerate(self.shards):
            for key, found in self._index(path):
                shard_ids.append(shard_id)
                keys.append(key)
                for role in _ROLES:
                    members[role].append(found.get(role, (-1, -1)))
        self._shard = np.asarray(shard_ids, np.int32)
        self._keys = StringColumn(keys)
        self._members = {r: np.asarray(m, np.int64).reshape(-1, 2) for r, m in members.items()}

    def _index(self, path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        """[(key, {role: (offset, size)})] of one shard, in tar order."""
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        problem = None
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    parsed = _split_key(info.name) if info.isfile() else None
                    if parsed is None:
                        continue
                    key, ext = parsed
                    found = samples.setdefault(key, {})
                    role = (
                        "image"
                        if ext in IMAGE_EXTS
                        else "label"
                        if ext == self.label_ext
                        else ext
                        if ext in ("txt", "json")
                        else None
                    )
                    if role is not None and role not in found:
                        found[role] = (info.offset_data, info.size)
        except FileNotFoundError:
            problem = "shard file does not exist"
        except (tarfile.TarError, EOFError, OSError) as e:
            note = f" after {len(samples)} samples" if samples else ""
            problem = f"unreadable or truncated tar{note} ({e})"
        if problem is None and not samples:
            problem = "empty shard (no samples)"
        if problem is not None:
            self.problems.append(f"{path}: {problem}")
        return list(samples.items())

    def __len__(self) -> int:
        return len(self._shard)

    def _read(self, role: str, path: str, index: int, where: str) -> bytes | None:
        offset, size = self._members[role][index]
        if offset < 0:
            return None
        return read_file(path, where, int(offset), int(size)) if size else b""

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        path = self.shards[self._shard[index]]
        where = f"{path} sample {self._keys[index]}"
        image = self._read("image", path, index, where)
        if image is None:
            raise BadRecord(where, f"no image member ({'/'.join(IMAGE_EXTS)})")
        meta: dict[str, Any] = {}
        raw_json = self._read("json", path, index, where)
        if raw_json is not None:
            try:
                meta = json.loads(raw_json)
            except ValueError as e:
                raise BadRecord(where, f"bad json member: {e}") from None
            if not isinstance(meta, dict):
                raise BadRecord(where, "json member is not an object")
        caption = self._read("txt", path, index, where)
        if caption is None:
            caption = meta.get("caption")
        label = self._read("label", path, index, where)
        if label is None:
            label = meta.get(self.label_field)
        return {
            "image": image,
            "caption": caption,
            "label": -1 if label is None else parse_label(label, where),
            "id": index,
            "where": where,
        }

    def __repr__(self) -> str:
        return f"WdsSource({self.spec!r}, shards={len(self.shards)}, samples={len(self)})"
