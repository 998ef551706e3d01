"""Why the default run learns colour long before shape: a diagnostic of `generated:shapes`.

Two probes, on the default recipe's image tower (`configs/siglip.py`):

  supervised   the image tower alone, trained with cross-entropy on the shape label;
               reports held-out shape accuracy (can the tower see shape at all?).
  contrastive  the two towers trained with the sigmoid loss (global), exactly the recipe's
               optimizer; reports zero-shot top-1 (shape+colour), the shape part of it,
               and the mean cosine between the zero-shot class embeddings of the same
               colour but different shapes (1.0 = the text tower ignores the shape word).

    python experiments/shape_learning.py supervised --batch=128 --examples=38400
    python experiments/shape_learning.py contrastive --batch=32 --examples=51200 \
        [--set=optim.lr=5e-3 --set=data.image_size=64 --set="model.image.variant='mu/8'"]

Results and their reading: experiments/shape_learning.md.
"""

from __future__ import annotations

import ast
import os
import sys
import time

import jax
import numpy as np
import optax
from absl import app, flags

from multimodal_ssl.data import shapes
from multimodal_ssl.data.tokenizers import get_tokenizer
from multimodal_ssl.losses import sigmoid_loss
from multimodal_ssl.losses.objectives import make_objective
from multimodal_ssl.models.towers import build_model
from multimodal_ssl.models.vit import ViT
from multimodal_ssl.optim import make_optimizer
from multimodal_ssl.recipes import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_EXAMPLES = flags.DEFINE_integer("examples", 51200, "Training examples (steps = examples/batch).")
_REPORTS = flags.DEFINE_integer("reports", 8, "How many evaluations during training.")
_SET = flags.DEFINE_multi_string("set", [], "Config overrides KEY=PYTHON_LITERAL.")
NUM_TEST = 512


def recipe(overrides: list[str]):
    config = load_recipe(os.path.join(ROOT, "configs", "siglip.py"))
    for item in overrides:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = ast.literal_eval(value)
    return config


def batch(source, indices, tokenizer):
    """(images f32 [n, S, S, 3] in [-1, 1], tokens i32 [n, L], label [n], shape [n])."""
    records = [source[int(i)] for i in indices]
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 127.5 - 1
    tokens = tokenizer.encode([r["caption"] for r in records])
    labels = np.array([r["label"] for r in records])
    return images, tokens, labels, np.array([r["shape_label"] for r in records])


def report_steps(steps: int) -> set[int]:
    return {int(round(k * (steps - 1) / _REPORTS.value)) for k in range(_REPORTS.value + 1)}


def supervised(config, train, test, tokenizer) -> None:
    cfg = {k: v for k, v in config.model.towers.image.items() if k != "type"}
    model = ViT(**{**cfg, "num_classes": len(shapes.SHAPES)})
    steps = _EXAMPLES.value // _BATCH.value
    x, _, _, _ = batch(train, range(_BATCH.value), tokenizer)
    params = model.init(jax.random.key(config.seed), x)
    tx, _ = make_optimizer(config.optim, steps)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    xt, _, _, st = batch(test, range(NUM_TEST), tokenizer)
    start = time.time()
    for i in range(steps):
        x, _, _, s = batch(train, range(i * _BATCH.value, (i + 1) * _BATCH.value), tokenizer)
        params, opt, loss = step(params, opt, x, s)
        if i in report_steps(steps):
            acc = float((model.apply(params, xt).argmax(-1) == st).mean())
            print(
                f"step {i} examples {(i + 1) * _BATCH.value} loss {float(loss):.3f} "
                f"held-out shape acc {acc:.3f} ({time.time() - start:.0f}s)",
                flush=True,
            )


def contrastive(config, train, test, tokenizer) -> None:
    model = build_model(config, tokenizer.vocab_size)
    steps = _EXAMPLES.value // _BATCH.value
    x, t, _, _ = batch(train, range(_BATCH.value), tokenizer)
    params = model.init(jax.random.key(config.seed), {"image": x, "text": t})["params"]
    params.update(make_objective(config.loss, ("image", "text")).init_params())
    tx, _ = make_optimizer(config.optim, steps)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, t):
        def loss_fn(p):
            z = model.apply({"params": p}, {"image": x, "text": t})
            return sigmoid_loss(z["image"], z["text"], p["t"], p["b"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    embed = jax.jit(lambda p, x, t: model.apply({"params": p}, {"image": x, "text": t}))
    names = shapes.classnames("shape_color")
    prompts = tokenizer.encode([tm.format(n) for n in names for tm in shapes.TEMPLATES])
    xt, _, yt, st = batch(test, range(NUM_TEST), tokenizer)

    def evaluate(p):
        zimg = embed(p, xt, prompts[:NUM_TEST])["image"]
        ztxt = np.concatenate(
            [
                np.asarray(embed(p, xt[:1], prompts[i : i + 256])["text"])
                for i in range(0, len(prompts), 256)
            ]
        )
        classes = ztxt.reshape(len(names), len(shapes.TEMPLATES), -1).mean(1)
        classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
        pred = (np.asarray(zimg) @ classes.T).argmax(-1)
        grid = classes.reshape(len(shapes.SHAPES), len(shapes.COLORS), -1)  # label order
        cos = np.einsum("acd,bcd->abc", grid, grid)
        off_diagonal = ~np.eye(len(shapes.SHAPES), dtype=bool)
        return (
            float((pred == yt).mean()),
            float((pred // len(shapes.COLORS) == st).mean()),
            float(cos[off_diagonal].mean()),
            float(p["t"]),
            float(p["b"]),
        )

    start = time.time()
    for i in range(steps):
        x, t, _, _ = batch(train, range(i * _BATCH.value, (i + 1) * _BATCH.value), tokenizer)
        params, opt, loss = step(params, opt, x, t)
        if i in report_steps(steps):
            top1, shape_acc, cos, t_, b_ = evaluate(params)
            print(
                f"step {i} examples {(i + 1) * _BATCH.value} loss {float(loss):.3f} "
                f"zeroshot_top1 {top1:.3f} shape {shape_acc:.3f} "
                f"text cos(same colour, other shape) {cos:.3f} t {t_:.2f} b {b_:.2f} "
                f"({time.time() - start:.0f}s)",
                flush=True,
            )


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("supervised", "contrastive"):
        sys.exit(__doc__)
    config = recipe(_SET.value)
    size, options = config.data.image_size, shapes.ShapesOptions()
    train = shapes.ShapesSource(split="train", image_size=size, seed=0, options=options)
    test = shapes.ShapesSource(split="test", image_size=size, seed=0, options=options)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.max_text_len)
    (supervised if argv[1] == "supervised" else contrastive)(config, train, test, tokenizer)


if __name__ == "__main__":
    app.run(main)
