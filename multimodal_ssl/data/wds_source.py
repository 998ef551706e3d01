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

With field requests (:mod:`.fields`) the record holds one field per request instead.
A request's ``name`` is a member extension (``wav``, ``depth.png``, ``npy``); by default
the image member for key ``image``, the caption (``txt`` member, else json ``caption``)
for ``text`` / ``caption`` and the key itself for any other key. A ``binary`` request
gets the member's bytes; another the member as text (UTF-8, undecodable bytes kept as
surrogate escapes), else the ``json`` member's field of that name. A request is served
(``provides``) when some indexed sample has its member, or, for a json fallback, when
the first sample's json has the field; a served field missing or empty in a sample is a
BadRecord naming the member.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import re
import tarfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from multimodal_ssl.data.csv_source import StringColumn, checked_requests, is_empty
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord, parse_label, read_file

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Indexed members ("roles"): the first image member, the label member and ".EXT" for
# the members read by extension.
_IMAGE, _LABEL, _TXT, _JSON = "image", "label", ".txt", ".json"
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


@dataclasses.dataclass(frozen=True)
class _Field:
    """Where a served request's value is: the indexed member ``role`` (``member`` names it
    in messages), else, for a text request, ``json_field`` of the json member."""

    key: str
    role: str
    member: str
    binary: bool
    json_field: str | None


def _resolve(request: FieldRequest) -> _Field:
    """The member (and json fallback) of ``request`` (defaults: module docstring)."""
    if request.name is None and request.key == "image":
        member = f"image member ({'/'.join(IMAGE_EXTS)})"
        return _Field(request.key, _IMAGE, member, request.binary, None)
    if request.name is None and request.key in ("text", "caption"):
        ext, json_field = "txt", "caption"
    else:
        ext = json_field = (request.name or request.key).lower()
    json_field = None if request.binary else json_field
    return _Field(request.key, f".{ext}", f"{ext!r} member", request.binary, json_field)


def _cut_header(path: str, end: int, samples: int) -> str | None:
    """tarfile stops quietly at a header cut short: a tar is complete when only zero
    blocks (the end-of-archive marker) follow the last member it read."""
    with open(path, "rb") as f:
        f.seek(end)
        rest = f.read()
    if rest.strip(b"\0"):
        return (
            f"truncated tar: a header is cut short at byte {end} of {end + len(rest)} "
            f"({samples} samples read before it; the rest are lost)"
        )
    return None


class WdsSource:
    """Random access to the samples of WebDataset shards.

    ``source[i]`` -> {"image": encoded bytes, "caption": bytes or str, "label": int,
    "id": i, "where": "SHARD sample KEY"}; BadRecord for a bad sample. With
    ``requests``: {request.key: member bytes (``binary``) or text / json value, for each
    request in ``provides``, "label", "id", "where"}.

    Attributes: ``problems`` (messages about shards that contributed nothing or were cut
    short), ``provides`` (the record keys served: ``image`` and ``caption`` without
    requests), ``available_fields`` (the member extensions seen).
    """

    classnames = None
    templates = None

    def __init__(
        self,
        spec: str,
        *,
        label_key: str | None,
        requests: Sequence[FieldRequest] | None = None,
    ):
        self.spec = spec
        self.label_ext = label_key or "cls"
        self.label_field = label_key or "label"
        self.requests = None if requests is None else checked_requests(requests)
        fields = [_resolve(r) for r in self.requests or ()]
        self._roles = tuple(dict.fromkeys([_IMAGE, _TXT, _JSON, _LABEL] + [f.role for f in fields]))
        self.shards = expand_shards(spec)
        if not self.shards:
            raise ValueError(f"wds:{spec}: the pattern matches no shard files")
        self.problems: list[str] = []
        self._exts: set[str] = set()
        shard_ids, keys = [], []
        members: dict[str, list[tuple[int, int]]] = {role: [] for role in self._roles}
        for shard_id, path in enumerate(self.shards):
            for key, found in self._index(path):
                shard_ids.append(shard_id)
                keys.append(key)
                for role in self._roles:
                    members[role].append(found.get(role, (-1, -1)))
        self._shard = np.asarray(shard_ids, np.int32)
        self._keys = StringColumn(keys)
        self._members = {r: np.asarray(m, np.int64).reshape(-1, 2) for r, m in members.items()}
        self.available_fields = sorted(self._exts)
        first_json = self._first_json() if fields else {}
        self._fields = [
            f
            for f in fields
            if np.any(self._members[f.role][:, 0] >= 0) or f.json_field in first_json
        ]
        self.provides = frozenset(
            ["image", "caption"] if self.requests is None else [f.key for f in self._fields]
        )

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
                    self._exts.add(ext)
                    found = samples.setdefault(key, {})
                    roles = (
                        [_IMAGE] * (ext in IMAGE_EXTS)
                        + [_LABEL] * (ext == self.label_ext)
                        + [f".{ext}"] * (f".{ext}" in self._roles)
                    )
                    for role in roles:
                        found.setdefault(role, (info.offset_data, info.size))
                end = tar.offset
            problem = _cut_header(path, end, len(samples))
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

    def _where(self, index: int) -> tuple[str, str]:
        """(shard path, location for messages) of sample ``index``."""
        path = self.shards[self._shard[index]]
        return path, f"{path} sample {self._keys[index]}"

    def _read(self, role: str, path: str, index: int, where: str) -> bytes | None:
        offset, size = self._members[role][index]
        if offset < 0:
            return None
        return read_file(path, where, int(offset), int(size)) if size else b""

    def _meta(self, path: str, index: int, where: str) -> dict[str, Any]:
        """The sample's parsed json member ({} without one); BadRecord when malformed."""
        raw_json = self._read(_JSON, path, index, where)
        if raw_json is None:
            return {}
        try:
            meta = json.loads(raw_json)
        except ValueError as e:
            raise BadRecord(where, f"bad json member: {e}") from None
        if not isinstance(meta, dict):
            raise BadRecord(where, "json member is not an object")
        return meta

    def _first_json(self) -> dict[str, Any]:
        """The json member of the first sample that has one ({} if none or unreadable)."""
        having = np.flatnonzero(self._members[_JSON][:, 0] >= 0)
        if not len(having):
            return {}
        try:
            path, where = self._where(int(having[0]))
            return self._meta(path, int(having[0]), where)
        except BadRecord:
            return {}

    def _field(self, field: _Field, path: str, index: int, where: str, meta: dict) -> Any:
        """The value of one served request in sample ``index``; BadRecord if missing."""
        data = self._read(field.role, path, index, where)
        if data is None and field.json_field is not None:
            if field.json_field not in meta:
                raise BadRecord(where, f"no {field.member} nor json field {field.json_field!r}")
            if is_empty(meta[field.json_field]):
                raise BadRecord(where, f"empty json field {field.json_field!r}")
            return meta[field.json_field]
        if data is None:
            raise BadRecord(where, f"no {field.member}")
        if is_empty(data):
            raise BadRecord(where, f"empty {field.member}")
        return data if field.binary else data.decode("utf-8", "surrogateescape")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        path, where = self._where(index)
        if self.requests is None:
            image = self._read(_IMAGE, path, index, where)
            if image is None:
                raise BadRecord(where, f"no image member ({'/'.join(IMAGE_EXTS)})")
            meta = self._meta(path, index, where)
            caption = self._read(_TXT, path, index, where)
            record = {
                "image": image,
                "caption": meta.get("caption") if caption is None else caption,
            }
        else:
            meta = self._meta(path, index, where)
            record = {f.key: self._field(f, path, index, where, meta) for f in self._fields}
        label = self._read(_LABEL, path, index, where)
        if label is None:
            label = meta.get(self.label_field)
        label = -1 if label is None else parse_label(label, where)
        return {**record, "label": label, "id": index, "where": where}

    def __repr__(self) -> str:
        requests = "" if self.requests is None else f", requests={self.requests}"
        return f"WdsSource({self.spec!r}{requests}, shards={len(self.shards)}, samples={len(self)})"
