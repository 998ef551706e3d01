"""The data.* config keys: mixtures, preprocessing specs, options, and their errors."""

import pytest

from multimodal_ssl import config as config_lib
from multimodal_ssl.data.sources import DataOptions, parse_mixture


def test_mixture_forms():
    assert parse_mixture("csv:/a.csv") == [("csv:/a.csv", 1.0)]
    pairs = [("csv:/a.csv", 3), ("wds:/b/{0..9}.tar", 0.5)]
    assert parse_mixture(pairs) == [("csv:/a.csv", 3.0), ("wds:/b/{0..9}.tar", 0.5)]
    assert parse_mixture(str(pairs)) == parse_mixture(pairs)  # as given on the command line


@pytest.mark.parametrize(
    "value, match",
    [
        ([], r"expected a spec or a non-empty list"),
        ([("csv:/a.csv", 0)], r"each entry must be \(spec, weight > 0\), got \('csv:/a.csv', 0\)"),
        ([("csv:/a.csv",)], r"each entry must be \(spec, weight > 0\)"),
        (["csv:/a.csv"], r"each entry must be \(spec, weight > 0\), got 'csv:/a.csv'"),
        ("[('csv:/a.csv', 1)", r"cannot parse mixture"),
        (3, r"expected a spec or a non-empty list"),
    ],
)
def test_bad_mixtures_name_the_key(value, match):
    with pytest.raises(ValueError, match=r"config\.data\.train: " + match):
        parse_mixture(value)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("pp_train", "resize|blur|value_range", r"config\.data\.pp_train: .*unknown op 'blur'"),
        ("pp_eval", "resize", r"config\.data\.pp_eval: .*must end with a value op"),
        ("train", [("csv:/a.csv", -1)], r"config\.data\.train: each entry must be"),
        ("read_threads", -1, r"config\.data\.read_threads: must be >= 0"),
    ],
)
def test_validate_checks_data_keys(key, value, match):
    config = config_lib.base_config()
    config.data[key] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


def test_options_from_config_and_unknown_keys():
    config = config_lib.base_config()
    config.data.csv_caption_key = "caption"
    config.data.shapes.train_examples = 7
    options = DataOptions.from_config(config.data)
    assert options.csv_caption_key == "caption" and options.shapes == {"train_examples": 7}
    assert options.pp_eval == config.data.pp_eval and options.strict is False
    assert DataOptions.coerce(options) is options
    assert DataOptions.coerce({"strict": True}).strict is True
    with pytest.raises(ValueError, match=r"source option 'csv_key': unknown; valid options"):
        DataOptions.coerce({"csv_key": "x"})
