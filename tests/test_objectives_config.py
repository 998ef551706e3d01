"""Objectives by name: ``loss.pairs`` parsing (explicit, anchor, all) and the checks of
``config.loss`` (unknown keys, bad values, one flag switching objectives), all naming the
config key."""

import pytest

from multimodal_ssl.losses.objectives import (
    OBJECTIVES,
    Sigmoid,
    Softmax,
    make_objective,
    objective_config,
    parse_pairs,
)

MODS = ("image", "text", "audio")
ANCHOR_PAIRS = [("image", "audio"), ("image", "text")]  # "anchor:image", sorted


# ----------------------------------------------------------------------------- parse_pairs


def test_parse_pairs_explicit_string_keeps_order_and_strips_items():
    assert parse_pairs("image-text,image-audio", MODS) == [("image", "text"), ("image", "audio")]
    assert parse_pairs(" text-image , audio-image ,", MODS) == [
        ("text", "image"),
        ("audio", "image"),
    ]


def test_parse_pairs_list_of_tuples():
    assert parse_pairs([("image", "text"), ("audio", "text")], MODS) == [
        ("image", "text"),
        ("audio", "text"),
    ]
    assert parse_pairs([["image", "audio"]], MODS) == [("image", "audio")]


def test_parse_pairs_anchor_pairs_anchor_with_every_other_modality_sorted():
    mods = ("text", "image", "depth", "audio")
    assert parse_pairs("anchor:image", mods) == [
        ("image", "audio"),
        ("image", "depth"),
        ("image", "text"),
    ]
    assert parse_pairs("anchor:text", mods) == [
        ("text", "audio"),
        ("text", "depth"),
        ("text", "image"),
    ]


def test_parse_pairs_all_is_every_unordered_pair_once():
    mods = ("text", "image", "depth", "audio")
    pairs = parse_pairs("all", mods)
    assert pairs == [
        ("audio", "depth"),
        ("audio", "image"),
        ("audio", "text"),
        ("depth", "image"),
        ("depth", "text"),
        ("image", "text"),
    ]
    assert parse_pairs("all", ("text", "image")) == [("image", "text")]


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("image-video", ["'video'", "no tower"]),
        ([("video", "text")], ["'video'", "no tower"]),
        ("image-text,depth-audio", ["'depth'", "no tower"]),
        ("image-image", ["'image-image'"]),
        ([("text", "text")], ["'text-text'"]),
        ("image-text-audio", ["'image-text-audio'"]),
        ("image-text,image-audio,image-text", ["lists a pair twice", "image-text"]),
        ("", ["no pairs"]),
        (" , ", ["no pairs"]),
        ([], ["no pairs"]),
        (None, ["no pairs"]),
        ("anchor:video", ["anchor 'video'", "no tower"]),
        ("anchor:", ["anchor ''"]),
    ],
)
def test_parse_pairs_errors_name_the_key_and_the_culprit(spec, fragments):
    with pytest.raises(ValueError) as info:
        parse_pairs(spec, MODS)
    msg = str(info.value)
    assert msg.startswith("config.loss.pairs: "), msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_make_objective_reports_bad_pairs_as_config_loss_pairs():
    with pytest.raises(ValueError, match=r"^config\.loss\.pairs: .*'audio'"):
        make_objective(objective_config("sigmoid", pairs="image-audio"), ("image", "text"))


def test_parse_pairs_rejects_a_pair_listed_twice_in_reverse_order():
    with pytest.raises(ValueError, match=r"^config\.loss\.pairs: "):
        parse_pairs("image-text,text-image", MODS)


@pytest.mark.parametrize("spec", ["all", "anchor:image"])
def test_parse_pairs_rejects_specs_that_give_no_pairs(spec):
    with pytest.raises(ValueError, match=r"^config\.loss\.pairs: "):
        parse_pairs(spec, ("image",))


# --------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "name, key", [("sigmoid", "tau"), ("softmax", "b_init"), ("softmax", "temperature")]
)
def test_resolve_rejects_unknown_keys(name, key):
    cfg = {**objective_config(name).to_dict(), key: 1.0}
    with pytest.raises(ValueError, match=rf"^config\.loss\.{key}: unknown key"):
        OBJECTIVES[name].resolve(cfg, ("image", "text"))
    with pytest.raises(ValueError, match=rf"^config\.loss\.{key}: unknown key"):
        make_objective(cfg, ("image", "text"))


def test_resolve_fills_defaults_and_parses_pairs():
    out = Sigmoid.resolve({"name": "sigmoid", "pairs": "anchor:image"}, MODS)
    assert out["pairs"] == ANCHOR_PAIRS
    assert out["impl"] == "global" and out["b_init"] == -10.0 and out["shared"] is False


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"impl": "dense"}, "impl"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_resolve_rejects_bad_values(overrides, key):
    cfg = {**objective_config("sigmoid").to_dict(), **overrides}
    with pytest.raises(ValueError, match=rf"^config\.loss\.{key}: "):
        make_objective(cfg, ("image", "text"))


def test_unknown_objective_name():
    with pytest.raises(ValueError, match=r"^config\.loss\.name: 'nope' is not one of"):
        objective_config("nope")
    with pytest.raises(ValueError, match=r"^config\.loss\.name: 'nope'"):
        make_objective({"name": "nope"}, ("image", "text"))


def test_one_flag_switches_objectives():
    """loss.name=softmax on the sigmoid recipe drops sigmoid's untouched b_init; a changed
    b_init is an error naming the key."""
    cfg = objective_config("sigmoid", impl="ring")
    cfg.name = "softmax"
    objective = make_objective(cfg, ("image", "text"))
    assert isinstance(objective, Softmax) and objective.config["impl"] == "ring"
    assert set(objective.init_params()) == {"t"}
    cfg.b_init = -5.0
    with pytest.raises(ValueError, match=r"config\.loss\.b_init: unknown key .*\['sigmoid'\]"):
        make_objective(cfg, ("image", "text"))
