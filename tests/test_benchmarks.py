"""Standard benchmarks: the papers' prompt ensembles, zero-shot (incl. ImageNet-A's class
subset and SigLIP's protocol) and COCO-style multi-caption retrieval on tiny array_record
TFDS datasets written here under the catalogue names (no TensorFlow), against known
answers and a brute-force reference; ``python -m multimodal_ssl.benchmark`` end to end
on a random transformers SigLIP."""

from __future__ import annotations

import io
import json
import string

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

from multimodal_ssl import benchmark
from multimodal_ssl import config as config_lib
from multimodal_ssl.config import base_config
from multimodal_ssl.data import karpathy_tfds
from multimodal_ssl.data.modalities import ImageProcessor, TextProcessor
from multimodal_ssl.evals import benchmarks, get_evaluator
from multimodal_ssl.evals.retrieval import retrieval_metrics
from multimodal_ssl.evals.zeroshot import subset_labels
from multimodal_ssl.recipes import benchmark_evals

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PP = "resize(4)|value_range(0, 1)"  # constant images stay constant: the pixel is the answer


def write_tfds(data_dir, cls_name, version, features, examples, config=None, split="test"):
    """Prepares ``examples`` (list of feature dicts) as split ``split`` of the array_record
    TFDS dataset that class ``cls_name`` names (e.g. ``Cifar10`` -> cifar10)."""
    import tensorflow_datasets as tfds

    attrs = {
        "VERSION": tfds.core.Version(version),
        "_info": lambda self: tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features)
        ),
        "_split_generators": lambda self, dl: {split: self._generate_examples()},
        "_generate_examples": lambda self: iter(enumerate(examples)),
    }
    if config:
        attrs["BUILDER_CONFIGS"] = [tfds.core.BuilderConfig(name=config)]
    cls = type(cls_name, (tfds.core.GeneratorBasedBuilder,), attrs, skip_registration=True)
    cls(data_dir=str(data_dir), file_format="array_record", config=config).download_and_prepare()


def png(value: int, shape=(32, 32)) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


def write_cifar10(data_dir, predicted, labels):
    """A ``cifar10`` (as TFDS builds it) whose example i shows the class predicted[i]."""
    import tensorflow_datasets as tfds

    features = {
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=CIFAR10),
    }
    examples = [
        {"id": f"ex{i}", "image": png(v), "label": lab}
        for i, (v, lab) in enumerate(zip(predicted, labels, strict=True))
    ]
    write_tfds(data_dir, "Cifar10", "3.0.2", features, examples)


def write_coco(data_dir, num_captions, image_shape=(4, 4)):
    """A ``coco_captions/2014`` test split: image i is filled with i and has captions
    ``f"cap {i} {k}"`` for k < num_captions[i]."""
    import tensorflow_datasets as tfds

    features = {
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="bytes"),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
    }
    examples = [
        {
            "image": np.full((*image_shape, 3), i, np.uint8),
            "captions": {"text": [f"cap {i} {k}" for k in range(n)]},
        }
        for i, n in enumerate(num_captions)
    ]
    write_tfds(data_dir, "CocoCaptions", "1.1.0", features, examples, config="2014")


class LookupTokenizer:
    """Texts -> [row of ``table[text]``]; an unknown text fails (the oracle only knows
    the prompts it was built for)."""

    def __init__(self, table, width=2):
        self.table, self.max_len = table, width

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], np.int32).reshape(len(texts), -1)


def prompt_tokenizer(classnames, templates):
    """Prompt -> [class + 1, template + 1]."""
    return LookupTokenizer(
        {
            t.replace("{}", c): (ci + 1, ti + 1)
            for ci, c in enumerate(classnames)
            for ti, t in enumerate(templates)
        }
    )


def processors(tokenizer):
    return {
        "image": ImageProcessor("image", None, PP, 4),
        "text": TextProcessor("text", None, tokenizer),
    }


def pixel(images):
    return np.rint(np.asarray(images)[:, 0, 0, 0] * 255).astype(int)


def make_evaluator(name, cfg, tokenizer, data_dir):
    cfg = {"every_steps": 1, "batch_size": 4, **cfg}
    return get_evaluator(cfg["type"])(
        name,
        cfg,
        processors=processors(tokenizer),
        image_size=4,
        seed=0,
        source_kwargs={"tfds_dir": str(data_dir), "pp_eval": PP},
    )


# ----------------------------------------------------------------- prompt ensembles


def test_prompt_ensembles_are_the_papers():
    imagenet = benchmarks.get("imagenet")
    templates = imagenet.prompt_templates("clip")
    assert len(templates) == 80 and len(set(templates)) == 80
    assert templates[:2] == ["a bad photo of a {}.", "a photo of many {}."]
    assert "itap of a {}." in templates and "a tattoo of the {}." in templates
    names = imagenet.classnames("clip")
    assert len(names) == 1000 and names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[999] == "toilet paper"
    a = benchmarks.get("imagenet_a")
    assert len(a.classnames("clip")) == 200 and a.subset_indices()[:3] == [6, 11, 13]
    assert a.classnames("clip")[0] == "stingray"  # ImageNet class 6
    assert len(benchmarks.get("imagenet_r").subset_indices()) == 200
    cifar = benchmarks.get("cifar10")
    assert cifar.classnames("clip") == CIFAR10 and len(cifar.prompt_templates("clip")) == 18
    assert benchmarks.get("food101").prompt_templates("clip") == ["a photo of {}, a type of food."]
    assert len(benchmarks.get("cifar100").classnames("clip")) == 100
    # SigLIP (big_vision): clip_paper = CLIP's 80 + "{}", canonicalized.
    siglip = imagenet.prompt_templates("siglip")
    assert len(siglip) == 81 and siglip[0] == "a bad photo of a {}" and "{}" in siglip
    assert imagenet.classnames("siglip")[:2] == ["tench", "goldfish"]
    assert all(c not in string.punctuation for t in siglip for c in t.replace("{}", ""))


@pytest.mark.parametrize("name", ["food101", "pets"])
def test_class_names_follow_the_tfds_label_order(name, tmp_path):
    """CLIP's lists are in the label order of the TFDS builders (read from the installed
    tensorflow_datasets, nothing downloaded): CLIP sorts Oxford Pets' cats first."""
    import tensorflow_datasets as tfds

    bench = benchmarks.get(name)
    label_names = tfds.builder(bench.tfds_name, data_dir=str(tmp_path)).info.features["label"].names
    ours = bench.classnames("clip")
    assert [n.lower().replace("_", " ") for n in label_names] == [n.lower() for n in ours]
    assert bench.classnames("siglip", label_names)[:2] == [
        benchmarks.canonicalize(n) for n in label_names[:2]
    ]


@pytest.mark.parametrize(
    "text, keep, want",
    [
        ("test_test", None, "test test"),
        (" test  {}...", "{}", "test {}"),
        ("test {}  {}  {}", "{}", "test {} {} {}"),
        ("test {}", None, "test"),
        ("Egyptian Mau, cat", ",", "egyptian mau, cat"),
    ],
)
def test_canonicalize_matches_big_vision(text, keep, want):  # big_vision's own test cases
    assert benchmarks.canonicalize(text, keep=keep) == want


def test_suite_config_and_lookup_errors():
    config = base_config()
    config.evals = benchmark_evals()  # every benchmark passes the config validator
    config_lib.validate(config)
    evals = benchmark_evals("imagenet", prompts="siglip", max_examples=8)
    assert sorted(evals) == sorted(benchmarks.SUITES["imagenet"])
    assert evals.imagenet_a.data == "tfds:imagenet_a:test" and evals.imagenet.prompts == "siglip"
    assert [b.name for b in benchmarks.suite("standard")][-2:] == ["coco", "flickr30k"]
    assert (
        benchmarks.find(None, "tfds:imagenet_v2/matched-frequency:3.0.0:test", "zeroshot", "k").name
        == "imagenet_v2"
    )
    assert benchmarks.find(None, "tfds:coco_captions/2014:test", "zeroshot", "k") is None
    assert benchmarks.find("none", "tfds:cifar10:test", "zeroshot", "k") is None
    with pytest.raises(ValueError, match=r"evals.x.benchmark: 'coco' is a retrieval benchmark"):
        benchmarks.find("coco", "tfds:cifar10", "zeroshot", "evals.x.benchmark")
    with pytest.raises(ValueError, match=r"unknown suite 'nope'"):
        benchmarks.suite("nope")
    with pytest.raises(ValueError, match=r"prompts: expected one of \['clip', 'siglip'\]"):
        benchmark_evals(prompts="openai")


# ------------------------------------------------------------------------ zero-shot


@pytest.mark.parametrize("prompts", ["clip", "siglip"])
def test_zeroshot_on_cifar10_picks_the_benchmark_from_the_tfds_name(prompts, tmp_path):
    """The evaluator of ``tfds:cifar10:test`` uses the benchmark's class names and
    templates (CLIP's 18 or SigLIP's 81); an oracle that predicts ``predicted[i]`` for
    image i scores the fraction of correct predictions."""
    labels = [i % 10 for i in range(12)]
    predicted = [3, 1, 2, 3, 4, 9, 6, 7, 0, 9, 0, 1]
    write_cifar10(tmp_path, predicted, labels)
    bench = benchmarks.get("cifar10")
    names = bench.classnames(prompts, CIFAR10)
    tok = prompt_tokenizer(names, bench.prompt_templates(prompts))
    cfg = {"type": "zeroshot", "data": "tfds:cifar10:test", "prompts": prompts}
    ev = make_evaluator("cifar10", cfg, tok, tmp_path)
    assert ev.benchmark.name == "cifar10" and len(ev.templates) == (18 if prompts == "clip" else 81)
    eye = np.eye(10, dtype=np.float32)
    got = ev.run({"image": lambda x: eye[pixel(x)], "text": lambda t: eye[t[:, 0] - 1]})
    want = np.mean(np.array(predicted) == np.array(labels))
    assert got == {"eval/cifar10/zeroshot_top1": want, "eval/cifar10/zeroshot_top5": want}


def test_zeroshot_imagenet_a_classifies_among_its_200_classes(tmp_path):
    """ImageNet-A's labels are ImageNet indices; the evaluator maps them into the 200
    classes of the subset, which are the only candidates."""
    import tensorflow_datasets as tfds

    subset = benchmarks.get("imagenet_a").subset_indices()
    chosen = [0, 5, 17, 199, 100, 42]  # positions in the subset
    predicted = [0, 5, 16, 199, 3, 42]
    features = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=1000),
        "file_name": tfds.features.Text(),
    }
    examples = [
        {"image": png(p, (6, 6)), "label": subset[c], "file_name": f"{i}.jpg"}
        for i, (c, p) in enumerate(zip(chosen, predicted, strict=True))
    ]
    write_tfds(tmp_path, "ImagenetA", "0.1.0", features, examples)
    bench = benchmarks.get("imagenet_a")
    tok = prompt_tokenizer(bench.classnames("clip"), bench.prompt_templates("clip"))
    ev = make_evaluator("a", {"type": "zeroshot", "data": "tfds:imagenet_a"}, tok, tmp_path)
    assert len(ev.classnames) == 200 and len(ev.templates) == 80
    eye = np.eye(200, dtype=np.float32)
    got = ev.run({"image": lambda x: eye[pixel(x)], "text": lambda t: eye[t[:, 0] - 1]})
    assert got["eval/a/zeroshot_top1"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"k: label 1 is not among the benchmark's 200 classes"):
        subset_labels(np.array([6, 1]), subset, "k")  # 1 (goldfish) is not in ImageNet-A
    with pytest.raises(ValueError, match=r"k: label -1 is not among"):
        subset_labels(np.array([-1]), subset, "k")
    np.testing.assert_array_equal(
        subset_labels(np.array(subset[::-1]), subset, "k"), range(199, -1, -1)
    )


# ------------------------------------------------------------------------ retrieval


def brute_force_retrieval(img, txt, owner, ks=(1, 5, 10)):
    """Loops: text->image per caption; image->text by the best of its captions; ties count
    against the query."""
    scores = txt @ img.T  # [M, N]
    t2i = [
        1 + sum(scores[m, j] >= scores[m, owner[m]] for j in range(len(img)) if j != owner[m])
        for m in range(len(txt))
    ]
    i2t = []
    for n in range(len(img)):
        mine = [m for m in range(len(txt)) if owner[m] == n]
        if not mine:
            continue
        best = max(scores[m, n] for m in mine)
        i2t.append(1 + sum(scores[m, n] >= best for m in range(len(txt)) if owner[m] != n))
    out = {}
    for prefix, ranks in (("img2txt", np.array(i2t)), ("txt2img", np.array(t2i))):
        out.update({f"{prefix}_r@{k}": float(np.mean(ranks <= k)) for k in ks})
        out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
        out[f"{prefix}_median_rank"] = float(np.median(ranks))
    return out


def test_multi_caption_metrics_equal_brute_force_with_ties():
    rng = np.random.default_rng(1)
    img = rng.integers(-1, 2, (9, 3)).astype(np.float32)  # few distinct scores: many ties
    owner = np.repeat(np.arange(9), rng.integers(1, 4, 9))
    txt = rng.integers(-1, 2, (len(owner), 3)).astype(np.float32)
    assert retrieval_metrics(img, txt, owner) == brute_force_retrieval(img, txt, owner)


def write_flickr30k(data_dir, num_captions):
    """``flickr30k`` prepared by ``multimodal_ssl.data.karpathy_tfds`` from a Karpathy JSON:
    test image i (a PNG file filled with i) has captions ``f"cap {i} {k}"``; one train
    image besides."""
    images = data_dir / "images"
    images.mkdir(parents=True)
    entries = []
    for i, n in enumerate([*num_captions, 2]):
        (images / f"{i}.png").write_bytes(png(i, (4, 4)).getvalue())
        split = "test" if i < len(num_captions) else "train"
        sentences = [{"raw": f"cap {i} {k}", "tokens": []} for k in range(n)]
        entries.append({"filename": f"{i}.png", "split": split, "sentences": sentences})
    path = data_dir / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    fv = flags.FlagValues()
    holders = karpathy_tfds.define_flags(fv)
    fv(
        [
            "karpathy_tfds",
            "--name=flickr30k",
            f"--karpathy_json={path}",
            f"--images={images}",
            f"--tfds_dir={data_dir}",
        ]
    )
    karpathy_tfds.main(holders, ["karpathy_tfds"])


@pytest.mark.parametrize(
    "name, data, write",
    [
        ("coco", "tfds:coco_captions/2014:test", write_coco),
        ("flickr30k", "tfds:flickr30k:test", write_flickr30k),
    ],
)
def test_multi_caption_retrieval_reads_every_caption(name, data, write, tmp_path):
    """The TFDS name selects the benchmark: every caption of ``captions/text`` is a query
    and a candidate; metrics equal the brute-force reference on the same embeddings
    (with ties)."""
    num_captions = [5, 1, 3, 5, 2, 4, 5]
    write(tmp_path, num_captions)
    rng = np.random.default_rng(2)
    img_table = rng.integers(-1, 2, (7, 3)).astype(np.float32)
    txt_table = rng.integers(-1, 2, (7, 5, 3)).astype(np.float32)
    tok = LookupTokenizer(
        {f"cap {i} {k}": (i + 1, k + 1) for i, n in enumerate(num_captions) for k in range(n)}
    )

    def embed_text(t):  # zero rows: padding of the last batch
        return np.where((t[:, :1] > 0), txt_table[t[:, 0] - 1, t[:, 1] - 1], 0)

    ev = make_evaluator(name, {"type": "retrieval", "data": data}, tok, tmp_path)
    assert ev.multi_caption and ev.benchmark.name == name
    got = ev.run({"image": lambda x: img_table[pixel(x)], "text": embed_text})
    owner = np.repeat(np.arange(7), num_captions)
    texts = np.concatenate([txt_table[i, :n] for i, n in enumerate(num_captions)])
    want = brute_force_retrieval(img_table, texts, owner)
    assert got == {f"eval/{name}/{k}": v for k, v in want.items()}
    # multi_caption=False: the first caption of each image, one text per image.
    cfg = {"type": "retrieval", "data": data, "multi_caption": False}
    ev = make_evaluator(name, cfg, tok, tmp_path)
    got = ev.run({"image": lambda x: img_table[pixel(x)], "text": embed_text})
    want = brute_force_retrieval(img_table, txt_table[:, 0], np.arange(7))
    assert got == {f"eval/{name}/{k}": v for k, v in want.items()}


def test_karpathy_json_errors_name_the_entry(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test"}]}))
    with pytest.raises(ValueError, match=r"k.json: images\[0\] lacks 'sentences'"):
        karpathy_tfds.read_karpathy(str(path), str(tmp_path))
    path.write_text(
        json.dumps(
            {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "x"}]}]}
        )
    )
    with pytest.raises(ValueError, match=r"images\[0\]: no image file .*a.jpg"):
        karpathy_tfds.read_karpathy(str(path), str(tmp_path))
    with pytest.raises(ValueError, match=r"--name=coco_captions: a TFDS catalogue dataset"):
        karpathy_tfds.prepare("coco_captions", str(path), str(tmp_path), str(tmp_path))


# ------------------------------------------------------------------------------- CLI


def test_benchmark_cli_on_a_random_transformers_siglip(tmp_path, capsys):
    """--pretrained=<random SigLIP folder with a sentencepiece tokenizer>: the table
    lists the prepared benchmarks (cifar10, coco) and the missing one (pets); a rerun
    resumes from the results file; a missing dataset fails the run unless skipped."""
    import siglip_reference as ref
    from test_convert_hf import _spiece_model

    model_dir = tmp_path / "siglip"
    ref.make_model().save_pretrained(model_dir)
    _spiece_model(model_dir / "spiece.model")
    data = tmp_path / "tfds"
    write_cifar10(data, [0, 1, 2, 3], [0, 1, 2, 3])  # one batch of 4 images, as coco:
    write_coco(data, [2, 1, 3, 5], image_shape=(20, 24))  # the same compiled shapes
    results = tmp_path / "results.jsonl"
    capsys.readouterr()

    def run(*extra):
        fv = flags.FlagValues()
        holders = benchmark.define_flags(fv)
        fv(
            [
                "benchmark",
                f"--pretrained={model_dir}",
                "--suite=cifar10,coco,pets",
                f"--results={results}",
                f"--tfds_dir={data}",
                "--batch_size=4",
                *extra,
            ]
        )
        benchmark.main(holders, ["benchmark"], devices=jax.devices()[:1])  # compiles faster
        return capsys.readouterr().out

    out = run("--skip_missing")
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["benchmark"] for r in lines] == ["cifar10", "coco"]
    assert lines[0]["model"] == str(model_dir) and lines[0]["prompts"] == "clip"
    assert 0 <= lines[0]["metrics"]["zeroshot_top1"] <= 1
    assert set(lines[1]["metrics"]) >= {"img2txt_r@1", "txt2img_r@5"}
    table = [x for x in out.splitlines() if x.startswith("|")]  # (TFDS prints banners)
    assert table[0].startswith("| benchmark | data | acc@1 |") and len(table) == 5
    assert table[2].startswith("| cifar10 | tfds:cifar10:test | ")
    assert table[4].startswith("| pets | tfds:oxford_iiit_pet:test | not run: tfds:oxford_iiit_pet")
    with pytest.raises(SystemExit, match="1"):  # resumed: nothing is run again
        run()
    assert len(results.read_text().splitlines()) == 2
