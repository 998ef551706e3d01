"""Data sources by spec string: ``"PREFIX:REST"`` -> a grain RandomAccessDataSource.

Known specs:
  ``generated:shapes[:SPLIT]``  the built-in shapes scenes (:mod:`.shapes`); SPLIT is
                                "train" or "test", default the caller's ``default_split``.

A source is anything with ``__len__`` and ``__getitem__(int) -> dict`` (grain's
RandomAccessDataSource protocol) whose records hold at least ``image`` (uint8
[H, W, 3]), ``caption`` (str), ``label`` (int) and ``id`` (int), plus the attributes
the evals read: ``classnames`` (label-order class names or None) and ``templates``
(zero-shot prompt templates with one "{}", or None). It must have a ``repr`` that is
stable across processes: grain stores it with the iterator state and checks it on
restore.

New formats register a factory under their prefix with :func:`register_source`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from multimodal_ssl.data import shapes


@runtime_checkable
class Source(Protocol):
    """A random-access data source plus the metadata evals need."""

    classnames: list[str] | None
    templates: list[str] | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class SourceArgs:
    """What every factory receives besides the rest of its spec.

    options: the source's own options (for ``generated:shapes`` the trainer passes
    ``config.data.shapes``; keys: see :class:`shapes.ShapesOptions`).
    """

    spec: str
    image_size: int
    seed: int
    default_split: str
    options: Mapping[str, Any]


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
    source_kwargs: Mapping[str, Any] | None = None,
) -> Source:
    """The source named by ``spec`` ("PREFIX:REST", e.g. "generated:shapes:test").

    Args:
      spec: source spec; the split defaults to ``default_split`` where the spec has none.
      image_size: side of the (square) images the source produces, in pixels.
      seed: seed of generated sources (example i is a function of seed, split, i).
      default_split: "train" for the training data, "test" for evals.
      source_kwargs: options of this source; unknown keys raise ValueError.
    Raises:
      ValueError: unknown prefix (the message lists the known ones), bad rest of spec or
        bad option.
    """
    if not isinstance(spec, str):
        raise ValueError(f"source spec: expected a str like 'generated:shapes', got {spec!r}")
    prefix, _, rest = spec.partition(":")
    if prefix not in _FACTORIES:
        raise ValueError(
            f"source spec {spec!r}: unknown prefix {prefix!r}; known prefixes: {known_prefixes()}"
        )
    args = SourceArgs(
        spec=spec,
        image_size=image_size,
        seed=seed,
        default_split=default_split,
        options=dict(source_kwargs or {}),
    )
    return _FACTORIES[prefix](rest, args)


# ---------------------------------------------------------------------- generated

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
    for key in args.options:
        if key not in fields:
            raise ValueError(
                f"generated:shapes option {key!r} (config data.shapes.{key}): unknown; "
                f"valid options are {fields}"
            )
    return shapes.ShapesSource(
        split=split or args.default_split,
        image_size=args.image_size,
        seed=args.seed,
        options=shapes.ShapesOptions(**args.options),
    )
