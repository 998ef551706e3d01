"""The standard zero-shot and retrieval benchmarks, read from prepared TFDS datasets.

A :class:`Benchmark` names its evaluator type, its default source spec and what the
evaluator needs beyond the data: the class names and prompt templates of the papers
(kept in ``classnames.json`` / ``templates.json`` next to this file, each entry with
the repository, commit and path it was copied from; regenerate with
``experiments/benchmark_prompts/extract.py``), the 200-class label subset of ImageNet-A
and -R, and the caption-list feature of COCO and Flickr30k.

An ``evals.<name>`` entry of type ``zeroshot`` / ``retrieval`` finds its benchmark by
``evals.<name>.benchmark`` or, when that is None, by the TFDS dataset its ``data``
reads (``tfds:imagenet2012:validation`` -> ``imagenet``); see :func:`find`.

Prompt protocols (``evals.<name>.prompts``):

* ``clip``: the class names and template ensembles of CLIP (Radford et al., 2021): the
  80 ImageNet templates and class names as open_clip's ``zero_shot_metadata.py`` has
  them, per-dataset lists from CLIP's ``data/prompts.md``.
* ``siglip``: big_vision's ``discriminative_classifier`` (SigLIP's evaluator): the CLIP
  ImageNet class names, the TFDS label names elsewhere, the 81 ``clip_paper`` templates
  (CLIP's 80 plus ``"{}"``), all passed through its ``canonicalize_text`` (lower case,
  no punctuation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import string
from collections.abc import Sequence

PROMPTS = ("clip", "siglip")
_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``tfds_name``: the TFDS dataset (without config or version) whose
    specs select it; ``classes`` / ``templates``: keys of the JSON files (None: a
    retrieval benchmark); ``subset``: key of a label subset (the classes evaluated,
    as indices into ``classes``); ``captions``: the feature holding each image's list
    of captions (retrieval)."""

    name: str
    type: str
    data: str
    tfds_name: str
    classes: str | None = None
    templates: str | None = None
    subset: str | None = None
    captions: str | None = None

    def classnames(self, prompts: str, source_names: Sequence[str] | None = None) -> list[str]:
        """The class names in label order (of the subset, if any) for ``prompts``;
        ``source_names``: the dataset's own label names (SigLIP uses them outside the
        ImageNet family)."""
        check_prompts(prompts)
        if prompts == "siglip" and self.classes != "imagenet":
            if not source_names:
                raise ValueError(
                    f"benchmark {self.name!r}: prompts='siglip' takes the dataset's label "
                    "names, but the source has none"
                )
            names = list(source_names)
        else:
            names = list(_classnames()[self.classes]["names"])
        if self.subset:
            names = [names[i] for i in self.subset_indices()]
        return [canonicalize(n, keep=",") for n in names] if prompts == "siglip" else names

    def prompt_templates(self, prompts: str) -> list[str]:
        """The template ensemble (strings with one ``{}``) for ``prompts``."""
        check_prompts(prompts)
        if prompts == "siglip":
            return [canonicalize(t, keep="{}") for t in _templates()["clip_paper"]["templates"]]
        return list(_templates()[self.templates]["templates"])

    def subset_indices(self) -> list[int] | None:
        """The evaluated classes as indices into the full label space, or None (all)."""
        return list(_classnames()[self.subset]["indices"]) if self.subset else None


def _zeroshot(name: str, data: str, classes: str, **kw) -> Benchmark:
    tfds_name = data.split(":")[1].split("/")[0]
    return Benchmark(name, "zeroshot", data, tfds_name, classes, templates=classes, **kw)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _zeroshot("imagenet", "tfds:imagenet2012:validation", "imagenet"),
        _zeroshot("imagenet_v2", "tfds:imagenet_v2/matched-frequency:test", "imagenet"),
        _zeroshot("imagenet_a", "tfds:imagenet_a:test", "imagenet", subset="imagenet_a_labelset"),
        _zeroshot("imagenet_r", "tfds:imagenet_r:test", "imagenet", subset="imagenet_r_labelset"),
        _zeroshot("imagenet_sketch", "tfds:imagenet_sketch:test", "imagenet"),
        _zeroshot("cifar10", "tfds:cifar10:test", "cifar10"),
        _zeroshot("cifar100", "tfds:cifar100:test", "cifar100"),
        _zeroshot("food101", "tfds:food101:validation", "food101"),
        _zeroshot("pets", "tfds:oxford_iiit_pet:test", "oxford_iiit_pet"),
        # The Karpathy test split: 5000 images, ~5 captions each.
        Benchmark(
            "coco",
            "retrieval",
            "tfds:coco_captions/2014:test",
            "coco_captions",
            captions="captions/text",
        ),
        # Not in the TFDS catalogue: prepared by multimodal_ssl.data.karpathy_tfds from the
        # Karpathy split (test: 1000 images, 5 captions each).
        Benchmark(
            "flickr30k", "retrieval", "tfds:flickr30k:test", "flickr30k", captions="captions/text"
        ),
    )
}

SUITES: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet", "imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch"),
    "zeroshot": (
        "imagenet",
        "imagenet_v2",
        "imagenet_a",
        "imagenet_r",
        "imagenet_sketch",
        "cifar10",
        "cifar100",
        "food101",
        "pets",
    ),
    "retrieval": ("coco", "flickr30k"),
}
SUITES["standard"] = SUITES["zeroshot"] + SUITES["retrieval"]


def get(name: str) -> Benchmark:
    """The benchmark ``name``; ValueError lists the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def suite(name: str) -> list[Benchmark]:
    """The benchmarks of suite ``name`` (or a comma-separated list of benchmark names)."""
    names = SUITES.get(name) or [n.strip() for n in name.split(",") if n.strip()]
    if not names or (name not in SUITES and any(n not in BENCHMARKS for n in names)):
        raise ValueError(
            f"unknown suite {name!r}; suites: {sorted(SUITES)}, or comma-separated "
            f"benchmarks from {sorted(BENCHMARKS)}"
        )
    return [BENCHMARKS[n] for n in names]


def tfds_dataset(spec: str) -> str | None:
    """``tfds:NAME[/CONFIG][:VERSION][:SPLIT]`` -> NAME; None for other specs."""
    if not isinstance(spec, str) or not spec.startswith("tfds:"):
        return None
    return re.split(r"[:/]", spec[len("tfds:") :], maxsplit=1)[0] or None


def find(benchmark: str | None, data: str, type_name: str, key: str) -> Benchmark | None:
    """The benchmark of an ``evals.<name>`` entry: ``benchmark`` if given (``"none"``:
    no benchmark), else the one whose TFDS dataset ``data`` reads (None if no such).
    ValueError naming ``key`` for an unknown name or one of another evaluator type."""
    if benchmark == "none":
        return None
    if benchmark is None:
        name = tfds_dataset(data)
        found = [b for b in BENCHMARKS.values() if b.tfds_name == name and b.type == type_name]
        return found[0] if found else None
    if benchmark not in BENCHMARKS:
        raise ValueError(f"{key}: unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}")
    found = BENCHMARKS[benchmark]
    if found.type != type_name:
        raise ValueError(f"{key}: {benchmark!r} is a {found.type} benchmark, not {type_name}")
    return found


def check_prompts(prompts: str, key: str = "prompts") -> None:
    if prompts not in PROMPTS:
        raise ValueError(f"{key}: expected one of {list(PROMPTS)}, got {prompts!r}")


def canonicalize(text: str, *, keep: str | None = None) -> str:
    """big_vision's ``prompt_engineering.canonicalize_text``: ``_`` -> space, punctuation
    removed (except the exact string ``keep``), lower case, whitespace collapsed."""
    text = text.replace("_", " ")
    drop = str.maketrans("", "", string.punctuation)
    parts = text.split(keep) if keep else [text]
    text = (keep or "").join(part.translate(drop) for part in parts)
    return re.sub(r"\s+", " ", text.lower()).strip()


@functools.cache
def _classnames() -> dict:
    with open(os.path.join(_DIR, "classnames.json")) as f:
        return json.load(f)


@functools.cache
def _templates() -> dict:
    with open(os.path.join(_DIR, "templates.json")) as f:
        return json.load(f)
