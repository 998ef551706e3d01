"""Data sources by spec string: ``"PREFIX:REST"`` -> a grain RandomAccessDataSource.

Known specs (see each module for the format's conventions and options):
  ``generated:shapes[:SPLIT]``          the built-in shapes scenes (:mod:`.shapes`); SPLIT
                                        "train" or "test", default the caller's
                                        ``default_split``.
  ``csv:PATH``                          a CSV/TSV of image paths + captions (:mod:`.csv_source`)
  ``wds:PATTERN``                       WebDataset tar shards (:mod:`.wds_source`)
  ``tfds:NAME[:VERSION][:SPLIT]``       a prepared array_record TFDS dataset
                                        (:mod:`.tfds_source`)
The training data (``data.train``) may also be a mixture: a list of ``(spec, weight)``
pairs (:func:`parse_mixture`).

A source is anything with ``__len__`` and ``__getitem__(int) -> dict`` (grain's
RandomAccessDataSource protocol) whose records hold ``image`` (uint8 [H, W, C] or
encoded bytes), ``caption`` (str or bytes), ``label`` (int, -1 = none) and ``id`` (int,
= the index), optionally ``where`` (the example's file and row, for messages), plus the
attributes the evals read: ``classnames`` (label-order class names or None) and
``templates`` (zero-shot prompt templates with one "{}", or None). Optional
attributes: ``problems`` (messages about parts that could not be opened: counted as
skips, or errors with ``strict``) and ``has_captions`` (False: no caption field; such
a source can be evaluated but not trained on). ``source[i]`` raises
:class:`~.records.BadRecord` for an unreadable example. Its ``repr`` must be stable
across processes: the training iterator's state records it and checks it on restore.

New formats register a factory under their prefix with :func:`register_source`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from absl import logging

from multimodal_ssl.data import shapes
from multimodal_ssl.data.csv_source import CsvSource
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.tfds_source import TfdsSource, parse_tfds_spec
from multimodal_ssl.data.wds_source import WdsSource


@runtime_checkable
class Source(Protocol):
    """A random-access data source plus the metadata evals need."""

    classnames: list[str] | None
    templates: list[str] | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


DEFAULT_PP = "resize_small|center_crop|value_range(-1, 1)"


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How to open and read sources: the ``source_kwargs`` of :func:`get_source` and of
    the evaluators, built from ``config.data`` by :meth:`from_config`. Each source kind
    reads its own fields; ``pp_eval`` and ``strict`` also govern ordered (eval) passes.
    """

    shapes: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # data.shapes
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    label_key: str | None = None  # None: the "label" column/feature/json key if present
    tfds_dir: str | None = None
    tfds_image_key: str = "image"
    tfds_caption_key: str = "caption"
    strict: bool = False
    pp_eval: str = DEFAULT_PP
    # The fields the csv/wds/tfds sources read (one per modality, see .fields); None:
    # the classic record of ``image`` and ``caption``.
    requests: tuple[FieldRequest, ...] | None = None

    @classmethod
    def from_config(cls, data_config: Mapping[str, Any], **overrides: Any) -> DataOptions:
        """The options in ``config.data`` (``pp_eval`` from ``data.pp_eval``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: data_config[k] for k in fields if k in data_config}
        values["shapes"] = dict(values.get("shapes", {}))
        return cls(**{**values, **overrides})

    @classmethod
    def coerce(cls, options: DataOptions | Mapping[str, Any] | None) -> DataOptions:
        """``options`` as DataOptions; a mapping's unknown keys raise ValueError."""
        if isinstance(options, DataOptions):
            return options
        fields = [f.name for f in dataclasses.fields(cls)]
        options = dict(options or {})
        for key in options:
            if key not in fields:
                raise ValueError(f"source option {key!r}: unknown; valid options are {fields}")
        return cls(**options)


@dataclasses.dataclass(frozen=True)
class SourceArgs:
    """What every factory receives besides the rest of its spec.

    options: how to open sources (``options.shapes`` for ``generated:shapes``; keys:
    see :class:`shapes.ShapesOptions`).
    """

    spec: str
    image_size: int
    seed: int
    default_split: str
    options: DataOptions


SourceFactory = Callable[[str, SourceArgs], Source]
_FACTORIES: dict[str, SourceFactory] = {}


def register_source(prefix: str) -> Callable[[SourceFactory], SourceFactory]:
    """Registers ``factory(rest_of_spec, args) -> Source`` for specs ``"prefix:..."``."""

    def decorator(factory: SourceFactory) -> SourceFactory:
        if prefix in _FACTORIES:
            raise ValueError(f"source prefix {prefix!r} is already registered")
        _FACTORIES[prefix] = factory
        return factory

    return decorator


def known_prefixes() -> list[str]:
    return sorted(_FACTORIES)


def get_source(
    spec: str,
    *,
    image_size: int,
    seed: int,
    default_split: str,
    source_kwargs: DataOptions | Mapping[str, Any] | None = None,
) -> Source:
    """The source named by ``spec`` ("PREFIX:REST", e.g. "generated:shapes:test").

    Args:
      spec: source spec; the split defaults to ``default_split`` where the spec has none.
      image_size: side of the (square) images generated sources render, in pixels.
      seed: seed of generated sources (example i is a function of seed, split, i).
      default_split: "train" for the training data, "test" for evals.
      source_kwargs: :class:`DataOptions` (or a mapping of its fields); unknown keys
        raise ValueError.
    Raises:
      ValueError: unknown prefix (the message lists the known ones), bad rest of spec,
        bad option, a missing file/column/feature; with ``strict``, any of the source's
        ``problems`` (else they are logged).
    """
    if not isinstance(spec, str):
        raise ValueError(f"source spec: expected a str like 'generated:shapes', got {spec!r}")
    prefix, _, rest = spec.partition(":")
    if prefix not in _FACTORIES:
        raise ValueError(
            f"source spec {spec!r}: unknown prefix {prefix!r}; known prefixes: {known_prefixes()}"
        )
    options = DataOptions.coerce(source_kwargs)
    args = SourceArgs(spec, image_size, seed, default_split, options)
    source = _FACTORIES[prefix](rest, args)
    problems = getattr(source, "problems", [])
    if problems and options.strict:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{spec}: {problems[0]}{more} [data.strict=True]")
    for problem in problems:
        logging.warning("Skipping part of %s: %s", spec, problem)
    return source


def parse_mixture(value: Any, key: str = "config.data.train") -> list[tuple[str, float]]:
    """A spec, a list of ``(spec, weight)`` pairs, or such a list written as a string
    (from the command line: ``"[('csv:/a.csv', 3), ('wds:/b/{0..9}.tar', 1)]"``) ->
    [(spec, weight)] with weights > 0 (relative; the stream draws from each source in
    that proportion). ValueError names ``key``."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "(")):
        try:
            value = ast.literal_eval(value)
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"{key}: cannot parse mixture {value!r}: {e}") from None
    if isinstance(value, str):
        value = [(value, 1.0)]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"{key}: expected a spec or a non-empty list of (spec, weight)")
    pairs = []
    for item in value:
        ok = isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2
        spec, weight = item if ok else (None, None)
        if not (
            isinstance(spec, str)
            and spec
            and isinstance(weight, int | float)
            and not isinstance(weight, bool)
            and math.isfinite(weight)
            and weight > 0
        ):
            raise ValueError(f"{key}: each entry must be (spec, weight > 0), got {item!r}")
        pairs.append((spec, float(weight)))
    return pairs


def open_train_sources(
    data_config: Mapping[str, Any], seed: int, requests: Sequence[FieldRequest] | None = None
) -> list[tuple[Source, float]]:
    """The sources and weights of ``data_config.train`` (``default_split="train"``), asked
    for the fields ``requests`` (one per modality; None: the image/caption pair)."""
    options = DataOptions.from_config(data_config, requests=requests and tuple(requests))
    return [
        (
            get_source(
                spec,
                image_size=data_config["image_size"],
                seed=seed,
                default_split="train",
                source_kwargs=options,
            ),
            weight,
        )
        for spec, weight in parse_mixture(data_config["train"])
    ]


# ---------------------------------------------------------------------- formats

_GENERATED = ("shapes",)


@register_source("generated")
def _generated_source(rest: str, args: SourceArgs) -> Source:
    """``generated:NAME[:SPLIT]``; NAME "shapes"."""
    name, _, split = rest.partition(":")
    if name not in _GENERATED:
        raise ValueError(
            f"source spec {args.spec!r}: unknown generated dataset {name!r}; "
            f"known: {list(_GENERATED)}"
        )
    if ":" in split:
        raise ValueError(f"source spec {args.spec!r}: expected 'generated:{name}[:SPLIT]'")
    fields = [f.name for f in dataclasses.fields(shapes.ShapesOptions)]
    for key in args.options.shapes:
        if key not in fields:
            raise ValueError(
                f"generated:shapes option {key!r} (config data.shapes.{key}): unknown; "
                f"valid options are {fields}"
            )
    return shapes.ShapesSource(
        split=split or args.default_split,
        image_size=args.image_size,
        seed=args.seed,
        options=shapes.ShapesOptions(**args.options.shapes),
        requests=args.options.requests,
        label_key=args.options.label_key,
    )


def _path(rest: str, args: SourceArgs, form: str) -> str:
    if not rest:
        raise ValueError(f"source spec {args.spec!r}: expected '{form}'")
    return rest


@register_source("csv")
def _csv_source(rest: str, args: SourceArgs) -> Source:
    """``csv:PATH`` (.tsv: tab-separated)."""
    o = args.options
    return CsvSource(
        _path(rest, args, "csv:PATH"),
        image_key=o.csv_image_key,
        caption_key=o.csv_caption_key,
        label_key=o.label_key,
        requests=o.requests,
    )


@register_source("wds")
def _wds_source(rest: str, args: SourceArgs) -> Source:
    """``wds:PATTERN`` (braces, globs, ``::``-joined patterns)."""
    o = args.options
    return WdsSource(_path(rest, args, "wds:PATTERN"), label_key=o.label_key, requests=o.requests)


@register_source("tfds")
def _tfds_source(rest: str, args: SourceArgs) -> Source:
    """``tfds:NAME[:VERSION][:SPLIT]``."""
    name, split = parse_tfds_spec(_path(rest, args, "tfds:NAME[:SPLIT]"), args.default_split)
    o = args.options
    return TfdsSource(
        name,
        split,
        data_dir=o.tfds_dir,
        image_key=o.tfds_image_key,
        caption_key=o.tfds_caption_key,
        label_key=o.label_key,
        requests=o.requests,
    )
