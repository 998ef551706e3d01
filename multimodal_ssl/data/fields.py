"""What the input pipeline asks a source for: one :class:`FieldRequest` per modality.

A source returns, for each request it can serve, ``record[request.key]``: the raw value
of the field ``request.name`` in its own format (CSV column, WebDataset member, TFDS
feature, generated field), undecoded. ``binary`` says what the field holds:

* ``binary=True``: file content. CSV: the column holds a path (relative to the CSV's
  folder) whose bytes are read; WebDataset: the member's bytes; TFDS / generated: the
  feature's value (encoded bytes or an array).
* ``binary=False``: text or numbers. CSV: the column's string; WebDataset: the member
  decoded as UTF-8 (or ``json[name]``); TFDS / generated: the feature's value.

A source lists the request keys it serves in ``provides`` (a source of a mixture may
lack a modality: those examples are masked); a request it cannot serve at all is not an
error at the source, the pipeline decides (an error when no source of the training data
has the modality).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FieldRequest:
    """``key``: the record key to fill (the modality name); ``name``: the field in the
    source (None = the source format's default for ``key``, e.g. CSV ``filepath`` for
    images); ``binary``: see the module docstring; ``sequence``: the whole list of a
    sequence field (e.g. every caption of a TFDS ``captions/text``) instead of its first
    element (sources holding one value per field serve that value)."""

    key: str
    name: str | None
    binary: bool
    sequence: bool = False

    def __repr__(self) -> str:
        # ``sequence`` only when set: a source's repr (with its requests) is recorded in
        # the training iterator state and must not change for existing runs.
        more = ", sequence=True" if self.sequence else ""
        return f"FieldRequest(key={self.key!r}, name={self.name!r}, binary={self.binary}{more})"
