"""Regenerates ``multimodal_ssl/evals/benchmarks/{classnames,templates}.json`` from
clones of the repositories that define the papers' prompts (nothing is downloaded):

    python experiments/benchmark_prompts/extract.py OPEN_CLIP BIG_VISION CLIP OUT_DIR

OPEN_CLIP, BIG_VISION, CLIP: git clones of mlfoundations/open_clip,
google-research/big_vision and openai/CLIP (their HEAD is read and its commit recorded).
The CLIP lists of CIFAR/Food-101/Oxford-IIIT Pets are reordered into TFDS's label order
(Oxford Pets: CLIP sorts cats, capitalised, before dogs; TFDS sorts case-insensitively).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import tensorflow_datasets as tfds


def _show(repo: str, path: str) -> tuple[str, str]:
    commit = subprocess.check_output(["git", "-C", repo, "rev-parse", "HEAD"], text=True).strip()
    text = subprocess.check_output(["git", "-C", repo, "show", f"HEAD:{path}"], text=True)
    return commit, text


def _exec(text: str) -> dict:
    env: dict = {}
    exec(text, env)  # the files are plain list/tuple literals (open_clip's are lambdas)
    return env


def _norm(name: str) -> str:
    return name.lower().replace("_", " ")


def main(open_clip: str, big_vision: str, clip: str, out_dir: str) -> None:
    oc_path = "src/open_clip/zero_shot_metadata.py"
    oc_commit, oc = _show(open_clip, oc_path)
    oc = _exec(oc)
    bvn_path = "big_vision/datasets/imagenet/class_names.py"
    bv_commit, bvn = _show(big_vision, bvn_path)
    bvn = _exec(bvn)
    bvp_path = "big_vision/evaluators/proj/image_text/prompt_engineering_constants.py"
    _, bvp = _show(big_vision, bvp_path)
    bvp = _exec(bvp)
    md_path = "data/prompts.md"
    clip_commit, md = _show(clip, md_path)
    sections = dict(re.findall(r"^## (\w+)\n\n```bash\n(.*?)```", md, re.S | re.M))

    def src(repo, commit, path, symbol, note=""):
        return f"github.com/{repo}@{commit}:{path} {symbol}" + (f" ({note})" if note else "")

    classnames = {
        "imagenet": {
            "source": src("mlfoundations/open_clip", oc_commit, oc_path, "IMAGENET_CLASSNAMES"),
            "names": list(oc["IMAGENET_CLASSNAMES"]),
        },
        "imagenet_a_labelset": {
            "source": src("google-research/big_vision", bv_commit, bvn_path, "IMAGENET_A_LABELSET"),
            "indices": list(bvn["IMAGENET_A_LABELSET"]),
        },
        "imagenet_r_labelset": {
            "source": src("google-research/big_vision", bv_commit, bvn_path, "IMAGENET_R_LABELSET"),
            "indices": list(bvn["IMAGENET_R_LABELSET"]),
        },
    }
    assert list(bvn["CLIP_IMAGENET_CLASS_NAMES"]) == classnames["imagenet"]["names"]
    templates = {
        "imagenet": {
            "source": src(
                "mlfoundations/open_clip", oc_commit, oc_path, "OPENAI_IMAGENET_TEMPLATES"
            ),
            "templates": [t("{}") for t in oc["OPENAI_IMAGENET_TEMPLATES"]],
        },
        "clip_paper": {
            "source": src(
                "google-research/big_vision", bv_commit, bvp_path, "CLIP_PAPER_PROMPT_TEMPLATES"
            ),
            "templates": list(bvp["CLIP_PAPER_PROMPT_TEMPLATES"]),
        },
    }
    tfds_order = {
        "cifar10": None,  # TFDS reads the names from the dataset's meta file: CLIP's order
        "cifar100": None,
        "food101": "food101",
        "oxford_iiit_pet": "oxford_iiit_pet",
    }
    for name, section in (
        ("cifar10", "CIFAR10"),
        ("cifar100", "CIFAR100"),
        ("food101", "Food101"),
        ("oxford_iiit_pet", "OxfordPets"),
    ):
        env = _exec(sections[section])
        names, note = list(env["classes"]), ""
        if tfds_order[name]:
            label_names = tfds.builder(name, data_dir=out_dir).info.features["label"].names
            by_norm = {_norm(n): n for n in names}
            reordered = [by_norm[_norm(n)] for n in label_names]
            if reordered != names:
                note = "reordered into TFDS's label order"
            names = reordered
        classnames[name] = {
            "source": src("openai/CLIP", clip_commit, md_path, f"## {section} classes", note),
            "names": names,
        }
        templates[name] = {
            "source": src("openai/CLIP", clip_commit, md_path, f"## {section} templates"),
            "templates": list(env["templates"]),
        }
    os.makedirs(out_dir, exist_ok=True)
    for fname, data in (("classnames.json", classnames), ("templates.json", templates)):
        with open(os.path.join(out_dir, fname), "w") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
