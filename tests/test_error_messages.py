"""Bad configs and inputs, as a user would write them: each gives one ValueError naming
the offending key, file or shape and what to change, at start (before any step).

Every case goes through the same stages as ``main``: ``config.validate``, then the
``Experiment`` (mesh, model, objective, optimizer, data, evaluators) on 8 devices."""

from __future__ import annotations

import re

import jax
import pytest
from tiny_checkpoint import write_tiny_npz

from multimodal_ssl import evaluate, pretrained
from multimodal_ssl.builder import Experiment
from multimodal_ssl.config import validate
from tests.test_train import tiny

CASES = [
    ({"batch_size": 12}, r"config\.batch_size: 12 is not divisible by the 8 batch shards"),
    ({"mesh.data": 3}, r"config\.mesh: .* needs 3 devices, but 8 are available"),
    ({"data.image_size": 18}, r"config\.data\.image_size: 18 is not a multiple of the 8x8 "
                              r"patches of config\.model\.towers\.image; use e\.g\. 16"),
    ({"model.image.pool": "maxx"}, r"config\.model\.towers\.image\.pool: 'maxx' is not one of"),
    ({"model.text.num_heads": 5}, r"config\.model\.towers\.text\.num_heads: width 32 is not "
                                  r"divisible by num_heads 5"),
    ({"model.image.variant": "Z/99"}, r"config\.model\.towers\.image: variant: unknown size 'Z'"),
    ({"optim.name": "adamz"}, r"config\.optim\.name: 'adamz' is not one of"),
    ({"optim.lr": -1.0}, r"config\.optim\.lr: must be > 0, got -1\.0"),
    ({"optim.freeze": "zzz"}, r"config\.optim\.freeze: 'zzz' matches no param"),
    ({"optim.microbatches": 3}, r"config\.optim\.microbatches: 3 does not divide the 2 rows"),
    ({"loss.name": "triplet"}, r"config\.loss\.name: 'triplet' is not one of"),
    ({"loss.pairs": "image-smell"}, r"config\.loss\.pairs: 'image-smell' names modality 'smell'"),
    ({"train.nan_policy": "ignore"}, r"config\.train\.nan_policy: 'ignore' is not one of"),
    ({"checkpoint.every_minutes": -1.0}, r"config\.checkpoint\.every_minutes: must be > 0"),
    ({"data.pp.image": "resize(16)"}, r"config\.data\.pp\.image: image towers are pre-processed "
                                      r"by config\.data\.pp_train and config\.data\.pp_eval"),
    ({"data.pp_train": "resize(16)|zork(3)"}, r"config\.data\.pp_train: .*zork"),
    ({"data.train": "csv:/no/such.csv"}, r"csv:/no/such\.csv: cannot read the CSV file: "
                                         r".*No such file or directory"),
    ({"data.tokenizer": "hf:/no/such"}, r"tokenizer spec 'hf:/no/such': cannot read /no/such"),
    ({"evals.zeroshot.query": "smell"}, r"config\.evals\.zeroshot\.query: modality 'smell' has "
                                        r"no tower"),
]


def _set(config, key, value):
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def _start(config) -> None:
    """What ``main`` builds before the first step (cheapest first)."""
    validate(config)
    exp = Experiment(config, jax.devices())
    exp.evaluators()
    next(iter(exp.train_loader()))
    exp.train_step(jax.eval_shape(exp.init_state))  # builds the optimizer (abstractly)


@pytest.mark.parametrize("overrides, message", CASES, ids=[",".join(o) for o, _ in CASES])
def test_a_bad_config_is_named_at_start(overrides, message):
    config = tiny()
    for key, value in overrides.items():
        _set(config, key, value)
    with pytest.raises(ValueError) as error:
        _start(config)
    assert re.search(message, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


def test_bad_checkpoint_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path}: not a transformers SigLIP folder"):
        pretrained.load(str(tmp_path))
    with pytest.raises(ValueError, match=r"--checkpoint=\S+: not a training workdir"):
        evaluate.checkpoint_root(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match=r"--checkpoint=\S+: no checkpoint under \S+checkpoints"):
        evaluate.load_params(Experiment(tiny(), jax.devices()[:1]), str(tmp_path))


def test_a_text_length_beyond_the_imported_position_table_is_named(tmp_path):
    write_tiny_npz(str(tmp_path / "w.npz"))
    config = tiny(**{"model.init_from": str(tmp_path / "w.npz"), "model.init_towers": "img,txt"})
    config.data.max_text_len = 999
    with pytest.raises(ValueError, match=r"config\.data\.max_text_len: 999, but the text tower "
                                         r"of \S+ pools position \d+ of (\d+); set it to \1"):
        _start(config)
