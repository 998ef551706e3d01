"""Base of the evaluators that fit a classifier on frozen features (of the ``query``
modality, default image) of a labelled train split and score it on a labelled test
split (k-NN, linear probe)."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from multimodal_ssl.evals import common


class FrozenFeaturesEvaluator(common.Evaluator):
    """Adds ``train_data`` (required source spec of the split the classifier is fit on,
    e.g. "generated:shapes:train") and ``max_train_examples`` (None = all of it) to the
    common keys; ``data`` / ``max_examples`` name the test split. Both splits need an
    int ``label``; the classes are ``0 .. num_classes - 1``."""

    def setup(self) -> None:
        self.train_data = self.open_data(
            self.config["train_data"], self.config["max_train_examples"]
        )

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.train_data = ml_collections.config_dict.placeholder(str)  # "generated:shapes:train"
        cfg.max_train_examples = ml_collections.config_dict.placeholder(int)  # None = all
        return cfg

    @classmethod
    def check_config(cls, name: str, cfg: dict[str, Any]) -> None:
        super().check_config(name, cfg)
        common.check_source_spec(f"evals.{name}.train_data", cfg["train_data"])
        common.check_int(
            f"evals.{name}.max_train_examples", cfg["max_train_examples"], allow_none=True
        )

    def features(
        self, embed: common.EmbedFns
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """-> (train_x [N, d] f32, train_y [N] i64, test_x [M, d] f32, test_y [M] i64,
        num_classes): the ``query`` embeddings and labels of both splits."""
        q = self.config["query"]
        train_x, train = common.embed_pass(self.train_data.batches(), q, embed[q], ("label",))
        test_x, test = common.embed_pass(self.data.batches(), q, embed[q], ("label",))
        train_y, test_y = (np.asarray(d["label"], np.int64) for d in (train, test))
        names = getattr(self.train_data.source, "classnames", None) or ()
        num_classes = max(len(names), int(train_y.max()) + 1, int(test_y.max()) + 1)
        return train_x, train_y, test_x, test_y, num_classes
