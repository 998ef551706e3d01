"""Input-pipeline throughput: examples/s of the training loader at 224 px with
augmentation, from a CSV of JPEG files and from WebDataset tars, with 0, 1 and 2
grain worker processes, against the training step's consumption rate.

    python experiments/input_throughput.py [--examples 768] [--batches 12] [--size 224]

``--size 32`` measures at the default recipe's image size (what `configs/siglip.py` with a
``csv:``/``wds:`` source would consume).

Writes a synthetic photo-like dataset (JPEG, quality 90, shorter side 256..384 px,
aspect 3:4..4:3) to a temporary directory as image files + CSV and as 4 WebDataset
shards, then times ``--batches`` batches of 64 after 2 warm-up batches (worker start-up
excluded) with ``data.pp_train = "random_resized_crop(0.5)|flip_lr|value_range(-1, 1)"``
and the byte tokenizer. Prints a markdown table and saves ``input_throughput.png``
next to this file. Results: ``input_throughput.md``.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from multimodal_ssl.data import pipeline, shapes, sources, tokenizers

PP = "random_resized_crop(0.5)|flip_lr|value_range(-1, 1)"
SIZE, BATCH = 224, 64
# Training consumption of the default recipe (configs/siglip.py, 32 px generated data,
# batch 128) on this 2-core machine: README "Default run, measured" (~190 examples/s).
TRAIN_EXAMPLES_PER_SEC = 190.0
HERE = os.path.dirname(os.path.abspath(__file__))


def photo(rng: np.random.Generator) -> bytes:
    """A JPEG with photo-like statistics: smooth colour fields plus texture noise."""
    short = int(rng.integers(256, 385))
    aspect = float(rng.uniform(0.75, 4 / 3))
    h, w = (short, int(short * aspect)) if aspect >= 1 else (int(short / aspect), short)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_dataset(root: str, n: int) -> tuple[str, str]:
    """n photos as root/img/*.jpg + root/train.csv and root/shard-{0..3}.tar."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"))
    rows, shards = (
        ["filepath,title"],
        [tarfile.open(f"{root}/shard-{s}.tar", "w") for s in range(4)],
    )
    for i in range(n):
        data, text = photo(rng), f"a synthetic photo number {i} with smooth colours"
        with open(f"{root}/img/{i:05d}.jpg", "wb") as f:
            f.write(data)
        rows.append(f"img/{i:05d}.jpg,{text}")
        for name, payload in ((f"{i:05d}.jpg", data), (f"{i:05d}.txt", text.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            shards[i % 4].addfile(info, io.BytesIO(payload))
    for tar in shards:
        tar.close()
    with open(f"{root}/train.csv", "w") as f:
        f.write("\n".join(rows) + "\n")
    return f"csv:{root}/train.csv", f"wds:{root}/shard-{{0..3}}.tar"


def measure(source, *, workers: int, batches: int, image_size: int, pp: str) -> float:
    """Examples/s over ``batches`` batches after 2 warm-up batches."""
    it = iter(
        pipeline.make_train_loader(
            source,
            batch_size=BATCH,
            seed=0,
            tokenizer=tokenizers.ByteTokenizer(64),
            image_size=image_size,
            preprocess=pp,
            worker_count=workers,
        )
    )
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (BATCH, image_size, image_size, 3)
    it.close()
    return batches * BATCH / elapsed


def plot(results: list[tuple[str, int, float]], size: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({name for name, _, _ in results}, key=[r[0] for r in results].index)
    width = 0.25
    for k, workers in enumerate((0, 1, 2)):
        values = [v for name in names for n, w, v in results if n == name and w == workers]
        ax.bar(np.arange(len(names)) + (k - 1) * width, values, width, label=f"{workers} workers")
    ax.axhline(TRAIN_EXAMPLES_PER_SEC, color="k", ls="--", lw=1, label="training step (default)")
    ax.axhline(2 * TRAIN_EXAMPLES_PER_SEC, color="r", ls=":", lw=1, label="2x training step")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("examples / s")
    ax.set_title(f"train loader, {size} px, {PP.rsplit('|', 1)[0]}, 2-core CPU")
    ax.set_ylim(0, 1.35 * max(2 * TRAIN_EXAMPLES_PER_SEC, *(v for _, _, v in results)))
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=768)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--size", type=int, default=SIZE, help="output image side, px")
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        specs = write_dataset(root, args.examples)
        print(f"wrote {args.examples} JPEGs in {time.perf_counter() - start:.1f} s", flush=True)
        for spec, name in zip(specs, ("CSV of JPEG files", "WebDataset tars"), strict=True):
            source = sources.get_source(spec, image_size=args.size, seed=0, default_split="train")
            for workers in (0, 1, 2):
                rate = measure(
                    source, workers=workers, batches=args.batches, image_size=args.size, pp=PP
                )
                results.append((name, workers, rate))
                print(f"{name}, {workers} workers: {rate:.0f} examples/s", flush=True)
    # For reference: the default run's own source (32 px, no augmentation), in-process.
    shapes_source = shapes.ShapesSource(
        split="train", image_size=32, seed=0, options=shapes.ShapesOptions()
    )
    default_pp = "resize_small|center_crop|value_range(-1, 1)"
    shapes_rate = measure(
        shapes_source, workers=0, batches=args.batches, image_size=32, pp=default_pp
    )
    load_after = os.getloadavg()
    print(f"\nload average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    print("\n| source | 0 workers | 1 worker | 2 workers |\n|---|---|---|---|")
    for name in ("CSV of JPEG files", "WebDataset tars"):
        rates = [f"{v:.0f}" for n, _, v in results if n == name]
        print(f"| {name}, {args.size} px, augmented | " + " | ".join(rates) + " |")
    print(f"| generated:shapes, 32 px (default run) | {shapes_rate:.0f} | | |")
    suffix = "" if args.size == SIZE else f"_{args.size}px"
    plot(results, args.size, os.path.join(HERE, f"input_throughput{suffix}.png"))


if __name__ == "__main__":
    main()
