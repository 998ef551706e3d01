"""The sweep API a recipe's ``get_hyper(h)`` uses: big_vision's (XManager's ``hyper``).

    def get_hyper(h):                      # or get_hyper(h, arg) for --config=file:ARG
        return h.product([
            h.sweep("config.optim.lr", [1e-3, 2e-3]),
            h.zipit([h.sweep("config.batch_size", [64, 128]),
                     h.sweep("config.total_steps", [800, 400])]),
            h.fixed("config.optim.warmup_steps", 30),
        ])

A :class:`Sweep` is an ordered list of points, each ``{"config.a.b": value}``:

- ``h.sweep(key, values)``: one point per value, in order; ``values`` may be a dict
  ``{label: value}``, whose labels then name the runs in place of the values (for
  values with no short spelling, e.g. a whole ``config.loss`` subtree per objective);
- ``h.fixed(key, value, length=1)``: ``length`` points all holding ``value``;
- ``h.product([s1, s2, ...])``: the cartesian product, ``s1`` varying slowest (like
  ``itertools.product``); the factors must set distinct keys;
- ``h.zipit([s1, s2, ...])``: point ``i`` of each, merged; equal lengths required (use
  ``h.fixed(key, value, length=n)`` to zip a constant), distinct keys;
- ``h.chainit([s1, s2, ...])``: the points of ``s1``, then of ``s2``, ...

Keys are ``"config."`` followed by the dotted config path, as in big_vision. A sweep also
records its *axes*, the keys that name its runs (:mod:`multimodal_ssl.sweep.plan`): the
keys of ``h.sweep``, where a ``zipit`` counts as one axis named by its first sweep
(``zipit([sweep(batch_size), sweep(total_steps)])`` names runs by ``batch_size``).
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "config."


@dataclasses.dataclass(frozen=True)
class Sweep:
    """``points``: one ``{"config.key": value}`` dict per run, in order; ``axes``: the keys
    that name its runs (module docstring); ``labels``: per point, ``{"config.key": label}``
    for the keys swept with labelled values (None: no labels anywhere)."""

    points: tuple[dict[str, Any], ...]
    axes: frozenset[str] = frozenset()
    labels: tuple[dict[str, str], ...] | None = None

    def label(self, i: int) -> dict[str, str]:
        """The labels of point ``i`` (``{}`` when none of its keys is labelled)."""
        return self.labels[i] if self.labels else {}

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def keys(self) -> list[str]:
        """Every key set by some point, in order of first appearance."""
        return list(dict.fromkeys(k for p in self.points for k in p))


def _check_key(fn: str, key: Any) -> None:
    if not isinstance(key, str) or not key.startswith(PREFIX) or len(key) == len(PREFIX):
        raise ValueError(
            f"h.{fn}({key!r}, ...): a key is 'config.' followed by the config path, "
            f"e.g. 'config.optim.lr' (big_vision's convention)"
        )


def sweep(key: str, values: Sequence[Any] | Mapping[str, Any]) -> Sweep:
    """One point ``{key: v}`` per ``v`` in ``values`` (a non-empty list or tuple), or per
    item of a dict ``{label: v}`` (the labels, non-empty distinct strings, name the runs)."""
    _check_key("sweep", key)
    if isinstance(values, Mapping):
        labels = list(values)
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(
                f"h.sweep({key!r}, {{...}}): a dict of values needs non-empty str labels, "
                f"got {labels!r}"
            )
        points = tuple({key: v} for v in values.values())
        return Sweep(points, frozenset([key]), tuple({key: x} for x in labels))
    if not isinstance(values, list | tuple | range) or not values:
        raise ValueError(f"h.sweep({key!r}, {values!r}): values must be a non-empty list")
    return Sweep(tuple({key: v} for v in values), frozenset([key]))


def fixed(key: str, value: Any, length: int = 1) -> Sweep:
    """``length`` points ``{key: value}`` (a constant to zip with sweeps of that length)."""
    _check_key("fixed", key)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"h.fixed({key!r}, ..., length={length!r}): length must be >= 1")
    return Sweep(tuple({key: value} for _ in range(length)))


def _as_sweeps(fn: str, sweeps: Sequence[Sweep]) -> list[Sweep]:
    if not isinstance(sweeps, list | tuple):
        raise ValueError(f"h.{fn} takes a list of sweeps, got {type(sweeps).__name__}")
    for s in sweeps:
        if not isinstance(s, Sweep):
            raise ValueError(f"h.{fn}: {s!r} is not a sweep (h.sweep, h.fixed, h.product, ...)")
    return list(sweeps)


def _check_disjoint(fn: str, sweeps: list[Sweep]) -> None:
    seen: dict[str, int] = {}
    for i, s in enumerate(sweeps):
        for key in s.keys():
            if key in seen:
                raise ValueError(
                    f"h.{fn}: {key} is set by both sweep {seen[key]} and sweep {i}; each key "
                    f"may appear in one of them"
                )
            seen[key] = i


def _axes(sweeps: list[Sweep]) -> frozenset[str]:
    return frozenset().union(*(s.axes for s in sweeps))


def _merge(sweeps: list[Sweep], combos) -> Sweep:
    """The points (and labels) of ``combos``: tuples of one point index per sweep."""
    points, labels = [], []
    for combo in combos:
        picked = list(zip(sweeps, combo, strict=True))
        points.append({k: v for s, i in picked for k, v in s.points[i].items()})
        labels.append({k: v for s, i in picked for k, v in s.label(i).items()})
    has_labels = any(s.labels for s in sweeps)
    return Sweep(tuple(points), labels=tuple(labels) if has_labels else None)


def product(sweeps: Sequence[Sweep]) -> Sweep:
    """Every combination of one point of each sweep; the first varies slowest."""
    sweeps = _as_sweeps("product", sweeps)
    _check_disjoint("product", sweeps)
    merged = _merge(sweeps, itertools.product(*(range(len(s)) for s in sweeps)))
    return dataclasses.replace(merged, axes=_axes(sweeps))


def zipit(sweeps: Sequence[Sweep]) -> Sweep:
    """Point ``i`` of every sweep, merged; the sweeps must have equal lengths. Its axes:
    those of the first sweep that has any (the others are taken to follow it)."""
    sweeps = _as_sweeps("zipit", sweeps)
    _check_disjoint("zipit", sweeps)
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        sizes = ", ".join(f"{'/'.join(s.keys())}: {len(s)}" for s in sweeps)
        raise ValueError(
            f"h.zipit: the sweeps have different lengths ({sizes}); zip sweeps of equal "
            f"length (h.fixed(key, value, length=n) repeats a constant)"
        )
    size = lengths.pop() if lengths else 0
    merged = _merge(sweeps, ((i,) * len(sweeps) for i in range(size)))
    return dataclasses.replace(merged, axes=next((s.axes for s in sweeps if s.axes), frozenset()))


def chainit(sweeps: Sequence[Sweep]) -> Sweep:
    """The points of each sweep, one sweep after the other."""
    sweeps = _as_sweeps("chainit", sweeps)
    labels = tuple(s.label(i) for s in sweeps for i in range(len(s)))
    return Sweep(
        tuple(p for s in sweeps for p in s.points),
        _axes(sweeps),
        labels if any(s.labels for s in sweeps) else None,
    )


# What ``get_hyper(h)`` receives as ``h``.
HYPER = types.SimpleNamespace(
    sweep=sweep, fixed=fixed, product=product, zipit=zipit, chainit=chainit
)
