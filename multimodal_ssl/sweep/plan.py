"""From ``--config=FILE[:ARG]`` and its ``get_hyper`` to a list of validated runs.

Each run is one ``python -m multimodal_ssl.main`` command: the sweep's recipe and
command-line overrides, then the run's own ``--config.KEY=VALUE`` overrides, with
``--workdir=<sweep workdir>/<run name>``. Every run's config is built the way ``main``
builds it (ml_collections' ``config_flags`` on exactly that command line) and checked
with :func:`multimodal_ssl.config.validate` before anything is launched, so a typo in a
swept key stops the whole sweep at once, naming the key.

Run names are ``label=value`` pairs joined by ``,`` (Hydra's convention), e.g.
``b_init=-5,t_init=2.303,seed=0``: the label is the shortest dotted suffix of the key
that is unique in the sweep, floats keep 4 significant digits (all digits if that would
make two names equal), a value swept as ``h.sweep(key, {label: value})`` is written as
its label, and characters other than ``A-Za-z0-9._+-@`` become ``_``. The keys
named are the sweep's axes (``h.sweep`` keys, one per ``zipit``: :mod:`.hyper`); should
that leave two runs with one name, every key whose value varies is named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from multimodal_ssl.sweep.hyper import HYPER, PREFIX, Sweep

MAX_NAME = 150  # longer names are cut and get a hash (file names stop at 255 bytes)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the sweep. ``overrides``: its ``{"config.key": value}`` (sweep order);
    ``args``: ``main``'s flags for it; ``total_steps`` / ``evals``: from its config, to
    tell from ``metrics.jsonl`` whether it finished; ``labels``: ``{"config.key": label}``
    of its values swept with labels (``h.sweep(key, {label: value})``)."""

    name: str
    workdir: str
    overrides: dict[str, Any]
    args: tuple[str, ...]
    total_steps: int
    evals: tuple[str, ...]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


def load_hyper(spec: str) -> Sweep:
    """The sweep of ``--config=spec`` (``path[:arg]``): its ``get_hyper(h)``, or
    ``get_hyper(h, arg)`` (``arg`` None without ``:arg``) when it takes a second argument."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config={spec}: no file {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(f"multimodal_ssl_sweep_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_hyper = getattr(module, "get_hyper", None)
    if get_hyper is None:
        raise ValueError(f"{path} defines no get_hyper(h); see README 'Sweeps'")
    takes_arg = len(inspect.signature(get_hyper).parameters) > 1
    result = get_hyper(HYPER, arg or None) if takes_arg else get_hyper(HYPER)
    if not isinstance(result, Sweep) or not len(result):
        raise ValueError(f"{path}: get_hyper must return a non-empty sweep, got {result!r}")
    return result


def format_value(value: Any) -> str:
    """``value`` as ``config_flags`` reads it back: strings as they are, else ``repr``."""
    if isinstance(value, str):
        return value
    if isinstance(value, ml_collections.ConfigDict):
        return repr(value.to_dict())
    return repr(value)


def _label_value(value: Any, exact: bool) -> str:
    if isinstance(value, float) and not exact:
        text = f"{value:.4g}"
    else:
        text = format_value(value)
    return re.sub(r"[^A-Za-z0-9._+@-]", "_", text)


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key (without ``config.``) unique among ``keys``."""
    parts = {k: k[len(PREFIX) :].split(".") for k in keys}
    out = {}
    for key, path in parts.items():
        for n in range(1, len(path) + 1):
            label = ".".join(path[-n:])
            others = [".".join(p[-n:]) for k, p in parts.items() if k != key]
            if label not in others:
                break
        out[key] = label
    return out


def run_names(sweep: Sweep) -> list[str]:
    """One readable, file-name-safe, unique name per point (module docstring)."""
    varying = {k for k in sweep.keys() if len({repr(p.get(k)) for p in sweep}) > 1}
    axes = [k for k in sweep.keys() if k in sweep.axes]
    every = [k for k in sweep.keys() if k in sweep.axes or k in varying]
    for keys, exact in ((axes, False), (every, False), (every, True)):
        labels = _labels(keys)
        names = [
            ",".join(
                f"{labels[k]}={_label_value(sweep.label(i).get(k, p[k]), exact)}"
                for k in keys
                if k in p
            )
            or "run"
            for i, p in enumerate(sweep)
        ]
        names = [_shorten(n) for n in names]
        if len(set(names)) == len(names):
            return names
    first = next(i for i, n in enumerate(names) if names.count(n) > 1)
    second = names.index(names[first], first + 1)
    raise ValueError(
        f"get_hyper: runs {first} and {second} have the same overrides "
        f"{sweep.points[first]}; every run must differ"
    )


def _shorten(name: str) -> str:
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]},{digest}"


def check_key(config: ml_collections.ConfigDict, key: str, where: str) -> None:
    """ValueError naming ``key`` (``config.a.b``) and the valid keys where it stops
    resolving in ``config``."""
    parts = key[len(PREFIX) :].split(".")
    node = config
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            valid = sorted(node.keys()) if hasattr(node, "keys") else []
            path = ".".join(parts[: i + 1])
            raise ValueError(f"config.{path}: unknown key ({where}); valid keys here are {valid}")
        node = node[part]


def parse_config(args: Sequence[str]) -> ml_collections.ConfigDict:
    """The config ``main`` builds from its flags ``args`` (``--config=...``,
    ``--config.KEY=VALUE``; others ignored), via ``config_flags`` as ``main`` does."""
    argv = ["main", *(a for a in args if a.startswith("--config"))]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{type(e).__name__}: {e}".replace("\n", " ")) from None
    return holder.value


def _same(a: Any, b: Any) -> bool:
    def norm(x):
        if isinstance(x, ml_collections.ConfigDict):
            return norm(x.to_dict())
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return tuple(norm(v) for v in x)
        return x

    return norm(a) == norm(b)


def _lookup(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key[len(PREFIX) :].split("."):
        node = node[part]
    return node


def plan(spec: str, workdir: str, cli_overrides: Sequence[str] = ()) -> list[Run]:
    """The validated runs of ``--config=spec`` under ``workdir``; ``cli_overrides``: the
    sweep command's own ``--config.KEY=VALUE`` flags (given to every run, before the
    swept ones). ValueError naming the key and the run on any bad key or value."""
    from multimodal_ssl.config import validate  # local: imports models and losses
    from multimodal_ssl.recipes import load_recipe

    sweep = load_hyper(spec)
    path, _, arg = spec.partition(":")
    recipe = load_recipe(path, arg or None)
    cli_keys = {}
    for flag in cli_overrides:
        key = flag[2:].split("=", 1)[0]
        check_key(recipe, key, f"from {flag}")
        cli_keys[key] = flag
    for key in sweep.keys():
        check_key(recipe, key, f"swept by get_hyper in {path}")
        if key in cli_keys:
            raise ValueError(
                f"{key} is swept by get_hyper in {path} and also set by {cli_keys[key]}; "
                f"drop one of them"
            )
    runs = []
    for i, (name, point) in enumerate(zip(run_names(sweep), sweep, strict=True)):
        run_dir = os.path.join(workdir, name)
        swept = [f"--{k}={format_value(v)}" for k, v in point.items()]
        args = (f"--config={spec}", f"--workdir={run_dir}", *cli_overrides, *swept)
        try:
            config = parse_config(args)
            for key, value in point.items():
                if not _same(_lookup(config, key), value):
                    raise ValueError(
                        f"{key}: {value!r} reads back as {_lookup(config, key)!r} from "
                        f"--{key}={format_value(value)}; use a value of the key's type"
                    )
            validate(config)
        except ValueError as e:
            raise ValueError(f"run {name}: {e}") from None
        runs.append(
            Run(
                name, run_dir, dict(point), args, config.total_steps, tuple(config.evals),
                dict(sweep.label(i)),
            )
        )
    return runs
