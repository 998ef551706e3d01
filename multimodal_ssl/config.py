"""The config schema: every key a recipe may set, its default, and validation.

Recipes (``configs/*.py``) start from :func:`base_config` and change values; they
never add keys. :func:`validate` runs at start-up and fails with a message naming
the offending key (``config.loss.impl: 'rign' is not one of [...]``) for unknown
keys, wrong types and bad values, so a typo never silently trains the wrong thing.

Open sub-trees are checked against their owner's own schema: ``model.towers.<modality>``
against its tower type's module fields, ``loss`` against the objective's
``default_config()``, ``evals.<name>`` against the evaluator type's, ``data.pp.<modality>``
by the modality's preprocessing, ``data.shapes`` by the source.

``model.image`` / ``model.text`` are command-line aliases: the same ConfigDict objects as
``model.towers.image`` / ``model.towers.text`` (``--config.model.image.pool=map`` works as
it always did). :func:`set_towers` keeps them in step when a recipe replaces the towers.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import ml_collections

from multimodal_ssl.losses.objectives import objective_class, objective_config

MESH_AXES = ("data", "fsdp", "model")
OPTIMIZERS = ("adamw", "adafactor", "muon")
SCHEDULES = ("cosine", "rsqrt", "constant")
NAN_POLICIES = ("stop", "skip")
DTYPES = ("float32", "bfloat16")
INIT_TOWERS = ("img", "txt", "t", "b")  # top-level subtrees of the two-tower params

# Sub-trees whose keys are validated by their owners, not against base_config().
_OPEN_SUBTREES = (
    "model.towers",
    "model.image",
    "model.text",
    "loss",
    "evals",
    "data.shapes",
    "data.train",
    "data.fields",
    "data.pp",
    "data.views",
)
# Keys that moved: a config setting the old one is told the new one.
_MOVED = {"model.t_init": "loss.t_init", "model.b_init": "loss.b_init"}
# Modalities whose tower is also reachable under its old key (model.image, model.text).
_ALIASES = ("image", "text")
# Prefix of the value of a key that a recipe leaves for the user to set (see required()).
_REQUIRED = "<required>"

def base_config() -> ml_collections.ConfigDict:
    """All keys with their defaults; a recipe overrides values, never adds keys."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256  # global, over all hosts and devices
    c.log_every_steps = 10

    c.data = ml_collections.ConfigDict()
    # Source spec ("generated:shapes", "csv:PATH", "wds:PATTERN", "tfds:NAME[:SPLIT]") or a
    # mixture [(spec, weight), ...] (multimodal_ssl/data/sources.py).
    c.data.train = ml_collections.FieldReference("generated:shapes", field_type=object)
    c.data.image_size = 32
    c.data.max_text_len = 48
    c.data.tokenizer = "bytes"  # or "sentencepiece:PATH.model", "hf:PATH/tokenizer.json"
    c.data.worker_count = 0  # grain worker processes (0 = decode in the main process)
    c.data.read_threads = 2  # threads per process reading and decoding examples
    # Image ops "op|op(args)|...|value op" (multimodal_ssl/data/preprocess.py).
    c.data.pp_train = "resize_small|center_crop|value_range(-1, 1)"
    c.data.pp_eval = "resize_small|center_crop|value_range(-1, 1)"
    c.data.strict = False  # True: a bad example stops the run (else it is skipped, counted)
    c.data.csv_image_key = "filepath"
    c.data.csv_caption_key = "title"
    c.data.tfds_dir = ml_collections.config_dict.placeholder(str)  # None = TFDS default
    c.data.tfds_image_key = "image"
    c.data.tfds_caption_key = "caption"
    c.data.shapes = ml_collections.ConfigDict()  # options of generated:shapes
    # Per modality: the record field it reads (CSV column, WebDataset member, TFDS feature,
    # generated field), e.g. {"audio": "wav"}; unset = the source's default for it.
    c.data.fields = ml_collections.ConfigDict()
    # Per modality other than image (data.pp_train/pp_eval) and text (data.tokenizer): its
    # preprocessing spec, e.g. {"audio": "resample(16000)|crop(1.0)|log_mel(64, 25, 10)"};
    # unset = the modality kind's default (multimodal_ssl/data/modalities.py).
    c.data.pp = ml_collections.ConfigDict()
    # Extra training inputs: {input: modality}, e.g. {"image_view2": "image"}: the
    # modality's field read again with independent random augmentation (data.pp_train),
    # embedded by its tower (SimCLR/SLIP, DeCUR intra-modal terms); not read by evals.
    c.data.views = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    # One tower per modality: {"type": one of models.towers.TOWER_TYPES, **its kwargs}.
    c.model.towers = ml_collections.ConfigDict(
        {"image": {"type": "vit", "variant": "mu/4"}, "text": {"type": "text", "variant": "mu"}}
    )
    set_towers(c, c.model.towers)
    c.model.embed_dim = 128
    c.model.dtype = "float32"  # compute dtype; params stay float32
    # Both towers' encoders (a tower dict's own "scan"/"remat" wins): one nn.scan over the
    # blocks (stacked params), and the rematerialisation policy of each block.
    c.model.scan = False
    c.model.remat = "none"
    # Pretrained init: a transformers SigLIP folder or big_vision .npz, and which of its
    # top-level subtrees ("img,txt,t,b") to copy; those towers take its architecture.
    # (img/txt: the towers of modalities image/text, models.towers.param_name.)
    c.model.init_from = ml_collections.config_dict.placeholder(str)
    c.model.init_towers = ""

    # The objective (multimodal_ssl/losses/objectives.py) and its own keys.
    c.loss = objective_config("sigmoid")

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"  # after linear warmup; rsqrt uses warmup_steps as timescale
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 1e-4  # decoupled, applied to kernels only
    c.optim.grad_clip = ml_collections.config_dict.placeholder(float)  # global norm
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    # Regex searched in "/"-joined param paths ("img/Transformer/..."); matches are frozen:
    # no gradient computed, no optimizer state, never updated.
    c.optim.freeze = ml_collections.config_dict.placeholder(str)
    # GradCache accumulation: embed the batch in this many micro-batches, compute the loss
    # on the whole batch, backprop micro-batch by micro-batch (same gradient, less memory).
    c.optim.microbatches = 1

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    # Params: (logical axis, mesh axis) rules (tensor parallel), then FSDP over "fsdp" for
    # params of >= fsdp_min_size elements (multimodal_ssl/sharding.py).
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = (("heads", "model"), ("mlp", "model"))
    c.sharding.fsdp_min_size = 2**14

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500
    # Also save when this many minutes passed since the last save (preemptible hardware).
    c.checkpoint.every_minutes = ml_collections.config_dict.placeholder(float)
    c.checkpoint.keep = 2

    # Non-finite loss, gradients or params: "stop" (exit naming the step; no update is
    # applied from that step on, so no checkpoint holds them) or "skip" (the update is
    # dropped, train/skipped_steps counts it; max_consecutive_skips in a row stop the run).
    c.train = ml_collections.ConfigDict()
    c.train.nan_policy = "stop"
    c.train.max_consecutive_skips = 10
    # A logged loss above spike_factor x the median of the last spike_window logged losses
    # is warned about and counted (train/loss_spikes); 0: off.
    c.train.spike_factor = 2.0
    c.train.spike_window = 50

    # A jax.profiler trace of steps [start_step, start_step + num_steps) in <workdir>/profile.
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = ml_collections.config_dict.placeholder(int)
    c.profile.num_steps = 3

    c.evals = ml_collections.ConfigDict()

    # SigLIP 2 self-distillation (SILC local-to-global) and masked prediction (TIPS) of the
    # image tower against its EMA teacher; off while both weights are 0
    # (multimodal_ssl/distill.py).
    from multimodal_ssl import distill  # local: keep config import light

    c.distill = distill.default_config()
    # SigLIP 2's LocCa decoder (captioning, referring expressions, grounded captioning) on
    # the image tower's patch tokens; off while decoder.weight is 0 (multimodal_ssl/locca.py).
    from multimodal_ssl import locca

    c.decoder = locca.default_config()
    return c


def set_towers(config: ml_collections.ConfigDict, towers: Mapping[str, Any]) -> None:
    """Sets ``config.model.towers`` to ``towers`` ({modality: {"type": ..., ...}}) and points
    the aliases ``model.image`` / ``model.text`` at the image / text towers (None when
    there is none). Each tower dict gets every key of its type's schema that it lacks
    (module defaults), so the command line can set any of them
    (``--config.model.towers.audio.dropout=0.1``); keys the model fills in itself
    (``dtype``, ``num_classes``, ``scan``, ``remat``, a text tower's ``vocab_size`` and
    ``max_len``) are left out unless given."""
    from multimodal_ssl.models.towers import tower_defaults  # local: keep config light

    config.model.towers = ml_collections.ConfigDict(
        {m: {**tower_defaults(t["type"]), **dict(t)} for m, t in towers.items()}
    )
    for modality in _ALIASES:
        config.model[modality] = config.model.towers.get(modality)


def required(example: str) -> str:
    """The value of a string key that a recipe cannot choose for the user (a data path, a
    tokenizer file): :func:`validate` stops at start, naming every such key and its
    ``example`` (``config.data.tokenizer: required by this recipe; set, e.g.
    --config.data.tokenizer=sentencepiece:/data/c4_en.model``)."""
    return f"{_REQUIRED} {example}"


def _required_keys(cfg: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """``[(dotted key, example)]`` of the keys still holding a :func:`required` value."""
    out = []
    for key, value in cfg.items():
        sub = f"{path}.{key}" if path else key
        if _is_dict(value):
            out += _required_keys(value, sub)
        elif isinstance(value, str) and value.startswith(_REQUIRED):
            out.append((sub, value[len(_REQUIRED) :].strip()))
    return out


def parse_init_towers(spec: str) -> tuple[str, ...]:
    """``model.init_towers`` ``"img,t"`` -> ``("img", "t")``; ValueError naming the key."""
    towers = tuple(s.strip() for s in spec.split(",") if s.strip())
    if any(t not in INIT_TOWERS for t in towers) or len(set(towers)) != len(towers):
        _fail(
            "model.init_towers",
            f"{spec!r} must be distinct comma-separated names from {list(INIT_TOWERS)}",
        )
    return towers


def _is_dict(value: Any) -> bool:
    return isinstance(value, Mapping | ml_collections.ConfigDict)


def _fail(path: str, message: str) -> None:
    raise ValueError(f"config.{path}: {message}")


def _check_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> None:
    for key, value in cfg.items():
        sub = f"{path}.{key}" if path else key
        if sub in _MOVED:
            _fail(sub, f"moved to config.{_MOVED[sub]}")
        if key not in schema:
            _fail(sub, f"unknown key; valid keys here are {sorted(schema)}")
        if sub in _OPEN_SUBTREES:
            continue
        expected = schema[key]
        if _is_dict(expected):
            if not _is_dict(value):
                _fail(sub, f"expected a dict of {sorted(expected)}, got {value!r}")
            _check_keys(value, expected, sub)
        elif expected is not None and value is not None:
            _check_type(sub, value, type(expected))


def _check_type(path: str, value: Any, expected: type) -> None:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        _fail(path, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(path, f"{value!r} is not one of {list(choices)}")


def _check_positive(path: str, value: Any, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        _fail(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_patches_fit(config: ml_collections.ConfigDict) -> None:
    """``data.image_size`` must be a multiple of every image-like tower's patch size."""
    from multimodal_ssl.data.modalities import modality_kind
    from multimodal_ssl.models.towers import tower_class

    size = config.data.image_size
    for modality, tower in config.model.towers.items():
        if modality_kind(modality, tower["type"]) not in ("image", "depth"):
            continue
        module = tower_class(tower["type"])(**{k: v for k, v in tower.items() if k != "type"})
        try:
            patch = module.sizes()["patch_size"]
        except ValueError as e:
            _fail(f"model.towers.{modality}", str(e))
        if size % patch[0] or size % patch[1]:
            fit = size - size % patch[0] or patch[0]
            _fail(
                "data.image_size",
                f"{size} is not a multiple of the {patch[0]}x{patch[1]} patches of "
                f"config.model.towers.{modality}; use e.g. {fit}",
            )


def _check_towers(model: ml_collections.ConfigDict) -> None:
    from multimodal_ssl.models import towers  # local: keep config import light

    if not _is_dict(model.towers) or not model.towers:
        _fail("model.towers", "must be a non-empty dict {modality: {'type': ..., ...}}")
    for modality, tower in model.towers.items():
        path = f"model.towers.{modality}"
        if not _is_dict(tower) or "type" not in tower:
            _fail(path, f"must be a dict with a 'type' key (one of {sorted(towers.TOWER_TYPES)})")
        if tower["type"] not in towers.TOWER_TYPES:
            _fail(f"{path}.type", f"{tower['type']!r} is not one of {sorted(towers.TOWER_TYPES)}")
        fields = towers.tower_fields(tower["type"])
        for key in tower:
            if key != "type" and key not in fields:
                alias = f" (alias config.model.{modality}.{key})" if modality in _ALIASES else ""
                _fail(
                    f"{path}.{key}{alias}",
                    f"unknown key; tower type {tower['type']!r} accepts {fields}",
                )
    for modality in _ALIASES:
        alias, tower = model.get(modality), model.towers.get(modality)
        if alias is not None and (tower is None or alias.to_dict() != tower.to_dict()):
            _fail(
                f"model.{modality}",
                f"is an alias of config.model.towers.{modality}, but the two differ; set the "
                f"tower in config.model.towers.{modality} (recipes: config.set_towers)",
            )


def _check_views(config: ml_collections.ConfigDict) -> None:
    """``data.views``: ``{input: modality}`` with a new input name and a tower's modality."""
    towers = sorted(config.model.towers)
    for name, modality in config.data.views.items():
        if name in config.model.towers:
            _fail(f"data.views.{name}", "names a tower's modality; pick a new input name")
        if modality not in config.model.towers:
            _fail(f"data.views.{name}", f"{modality!r} has no tower (towers: {towers})")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key or value in ``config``."""
    _check_keys(config, base_config(), "")
    missing = _required_keys(config, "")
    if missing:
        keys = " and ".join(f"config.{k}" for k, _ in missing)
        flags = " ".join(shlex.quote(f"--config.{k}={example}") for k, example in missing)
        raise ValueError(f"{keys}: required by this recipe; set, e.g. {flags}")
    for key in ("total_steps", "batch_size", "log_every_steps"):
        _check_positive(key, config[key])
    for key in ("image_size", "max_text_len"):
        _check_positive(f"data.{key}", config.data[key])
    _check_positive("data.worker_count", config.data.worker_count, allow_zero=True)
    _check_positive("data.read_threads", config.data.read_threads, allow_zero=True)
    from multimodal_ssl.data.preprocess import Preprocess  # local: keep config import light
    from multimodal_ssl.data.sources import parse_mixture

    parse_mixture(config.data.train)
    for key in ("pp_train", "pp_eval"):
        try:
            Preprocess(config.data[key], config.data.image_size)
        except ValueError as e:
            _fail(f"data.{key}", str(e))

    _check_towers(config.model)
    from multimodal_ssl.data.modalities import check_pp_config  # local: keep config light

    check_pp_config(config)
    _check_patches_fit(config)
    _check_positive("model.embed_dim", config.model.embed_dim)
    _check_choice("model.dtype", config.model.dtype, DTYPES)
    from multimodal_ssl.models.common import REMAT_POLICIES

    _check_choice("model.remat", config.model.remat, tuple(REMAT_POLICIES))
    towers = parse_init_towers(config.model.init_towers)
    if bool(towers) != bool(config.model.init_from):
        _fail(
            "model.init_from" if towers else "model.init_towers",
            f"model.init_from={config.model.init_from!r} and model.init_towers="
            f"{config.model.init_towers!r} must be set together (a transformers SigLIP folder "
            f"or big_vision .npz, and the subtrees to copy from it, e.g. 'img')",
        )
    if config.model.init_from and not os.path.exists(os.path.expanduser(config.model.init_from)):
        _fail("model.init_from", f"{config.model.init_from!r} does not exist")

    if not _is_dict(config.loss) or "name" not in config.loss:
        _fail("loss", "must be a dict with a 'name' key (an objective)")
    _check_views(config)
    objective_class(config.loss.name).resolve(
        config.loss, [*config.model.towers, *config.data.views]
    )

    _check_choice("optim.name", config.optim.name, OPTIMIZERS)
    _check_choice("optim.schedule", config.optim.schedule, SCHEDULES)
    _check_positive("optim.lr", config.optim.lr)
    _check_positive("optim.warmup_steps", config.optim.warmup_steps, allow_zero=True)
    _check_positive("optim.weight_decay", config.optim.weight_decay, allow_zero=True)
    if config.optim.grad_clip is not None:
        _check_positive("optim.grad_clip", config.optim.grad_clip)
    if config.optim.freeze is not None:
        try:
            re.compile(config.optim.freeze)
        except re.error as e:
            _fail("optim.freeze", f"{config.optim.freeze!r} is not a valid regex: {e}")

    sizes = dict(config.mesh)
    for axis, size in sizes.items():
        if not isinstance(size, int) or (size != -1 and size < 1):
            _fail(f"mesh.{axis}", f"must be a positive int or -1 (= the rest), got {size!r}")
    if list(sizes.values()).count(-1) > 1:
        _fail("mesh", f"at most one axis may be -1, got {sizes}")
    _check_positive("optim.microbatches", config.optim.microbatches)
    for rule in config.sharding.rules:
        if not (
            isinstance(rule, tuple | list)
            and len(rule) == 2
            and isinstance(rule[0], str)
            and (rule[1] is None or rule[1] in MESH_AXES)
        ):
            _fail("sharding.rules", f"{rule!r} is not a (logical axis, one of {MESH_AXES} or None)")
    _check_positive("sharding.fsdp_min_size", config.sharding.fsdp_min_size, allow_zero=True)

    _check_positive("checkpoint.every_steps", config.checkpoint.every_steps)
    _check_positive("checkpoint.keep", config.checkpoint.keep)
    if config.checkpoint.every_minutes is not None:
        _check_positive("checkpoint.every_minutes", config.checkpoint.every_minutes)
    _check_choice("train.nan_policy", config.train.nan_policy, NAN_POLICIES)
    _check_positive("train.max_consecutive_skips", config.train.max_consecutive_skips)
    _check_positive("train.spike_window", config.train.spike_window)
    if config.train.spike_factor != 0 and not config.train.spike_factor > 1:
        raise ValueError(
            f"config.train.spike_factor: must be > 1 (or 0: off), got "
            f"{config.train.spike_factor!r}"
        )
    if config.profile.start_step is not None:
        _check_positive("profile.start_step", config.profile.start_step)
    _check_positive("profile.num_steps", config.profile.num_steps)

    from multimodal_ssl import distill, locca

    distill.validate(config)
    locca.validate(config)

    from multimodal_ssl.evals import get_evaluator  # local: evals import data and models

    for name, eval_cfg in config.evals.items():
        if not _is_dict(eval_cfg) or "type" not in eval_cfg:
            _fail(f"evals.{name}", "must be a dict with a 'type' key")
        try:
            evaluator_cls = get_evaluator(eval_cfg["type"])
        except ValueError as e:
            _fail(f"evals.{name}.type", str(e))
        try:  # the evaluator's own key and value checks, run before anything is built
            evaluator_cls.resolve(name, eval_cfg)
        except ValueError as e:
            raise ValueError(f"config.{e}") from e
