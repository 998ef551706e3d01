"""SigLIP 2's LocCa decoder (multimodal_ssl/locca.py, data/locca_tasks.py,
models/text_decoder.py, losses/captioning.py, evals/locca.py): the loss against a naive
float64 reference in value and gradient, the task rows, boxes of the generated scenes,
causal vs parallel attention, greedy decoding against teacher forcing, the decoder's
gradient reaching the image tower through the one shared forward pass, and the
config checks."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl import locca
from multimodal_ssl.config import validate
from multimodal_ssl.data import locca_tasks as lt
from multimodal_ssl.data.fields import FieldRequest
from multimodal_ssl.data.records import BadRecord
from multimodal_ssl.data.shapes import ShapesOptions, ShapesSource
from multimodal_ssl.data.tokenizers import ByteTokenizer
from multimodal_ssl.losses.captioning import captioning_loss
from multimodal_ssl.models.text_decoder import TextDecoder, attention_mask
from multimodal_ssl.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TOK = ByteTokenizer(16)


# ------------------------------------------------------------------------- the loss


def _naive_loss(logits, labels, weights):
    """float64 numpy: mean NLL over weighted tokens, and its gradient w.r.t. logits."""
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    logz = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
    nll = logz - np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    total = max(weights.sum(), 1.0)
    p = np.exp(logits - logz[..., None])
    onehot = np.eye(logits.shape[-1])[labels]
    return (weights * nll).sum() / total, weights[..., None] * (p - onehot) / total


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_captioning_loss_equals_the_naive_reference_in_value_and_gradient(scale):
    rng = np.random.default_rng(0)
    logits = scale * rng.normal(size=(3, 5, 7))
    labels = rng.integers(0, 7, (3, 5))
    weights = (rng.random((3, 5)) < 0.6).astype(np.float64)
    task = np.array([0, 2, 0])
    want, want_grad = _naive_loss(logits, labels, weights)
    with jax.enable_x64(True):
        def f(x):
            return captioning_loss(x, jnp.asarray(labels), jnp.asarray(weights))[0]

        got, grad = jax.value_and_grad(f)(jnp.asarray(logits))
        _, per_task = captioning_loss(
            jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights), jnp.asarray(task),
            ("a", "b", "c"),
        )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-9)
    rows = task == 0
    np.testing.assert_allclose(
        per_task["a"], _naive_loss(logits[rows], labels[rows], weights[rows])[0], rtol=1e-6)
    assert float(per_task["b"]) == 0.0  # no rows of that task: 0, not NaN


# ------------------------------------------------------------------ rows and boxes


def test_boxes_format_parse_and_iou():
    assert lt.format_box([0.0, 0.5, 1.0, 0.25], 32) == "00 16 31 08"
    np.testing.assert_allclose(lt.parse_box("00 16 31 08", 32), [0, 16 / 31, 1, 8 / 31])
    for bad in ("00 16 31", "00 16 31 x8", "00 16 31 32", ""):
        assert lt.parse_box(bad, 32) is None
    assert lt.box_iou(np.array([0, 0, 2, 2.0]), np.array([1, 1, 3, 3.0])) == pytest.approx(1 / 7)
    assert lt.box_iou(np.array([0, 0, 1, 1.0]), np.array([2, 2, 3, 3.0])) == 0.0


def test_a_row_masks_the_prefix_and_predicts_target_then_eos():
    row = lt.decoder_row(TOK, "ab", "xyz", 8, "here")
    sp = lt.special_ids(TOK.vocab_size)
    ids = [sp["bos"], *(ord(c) + 1 for c in "abxyz"), sp["eos"]]
    np.testing.assert_array_equal(row["inputs"], [*ids[:-1], 0, 0])
    np.testing.assert_array_equal(row["labels"][:6], ids[1:])
    # Weighted: the labels x, y, z and EOS (positions 2..5), not the prefix's a, b.
    np.testing.assert_array_equal(row["weights"], [0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["valid"], [1] * 6 + [0, 0])
    assert row["prefix_len"] == 3
    with pytest.raises(BadRecord, match="exceeds config.decoder.max_len 5"):
        lt.decoder_row(TOK, "ab", "xyz", 5, "here")


def test_the_processor_draws_tasks_by_weight_deterministically():
    proc = lt.LoccaProcessor(TOK, field="locca", max_len=48, box_bins=32,
                             task_weights={"caption": 1, "referring": 1, "grounded": 0},
                             parallel_fraction=0.5)
    field = ('{"caption": "a red circle", '
             '"objects": [{"name": "red circle", "box": [0.1, 0.2, 0.3, 0.4]}]}')
    rows = [proc.read(field, "w", np.random.default_rng(i)) for i in range(200)]
    again = [proc.read(field, "w", np.random.default_rng(i)) for i in range(200)]
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(rows, again, strict=True))
    tasks = np.array([r["task"] for r in rows])
    assert set(tasks) == {0, 1} and 70 < (tasks == 0).sum() < 130
    assert 60 < sum(bool(r["parallel"]) for r in rows) < 140
    referring = next(r for r in rows if r["task"] == 1)
    target = referring["labels"][referring["weights"] > 0][:-1]  # without EOS
    assert TOK.decode(target)[0] == "03 06 09 12"
    batch = proc.collate(rows[:4])
    assert batch["locca/inputs"].shape == (4, 48) and batch["locca/parallel"].shape == (4,)
    with pytest.raises(BadRecord, match=r"objects\[0\] needs a 'name'"):
        proc.read({"caption": "c", "objects": [{"box": [0, 0, 1, 1]}]}, "w",
                  np.random.default_rng())


def test_generated_boxes_hold_their_objects_tightly():
    source = ShapesSource(split="train", image_size=64, seed=0,
                          options=ShapesOptions(max_objects=1),
                          requests=[FieldRequest("image", None, True),
                                    FieldRequest("locca", None, False)])
    for i in range(12):
        record = source[i]
        (obj,) = record["locca"]["objects"]
        on = np.abs(record["image"].astype(int) - 50).sum(-1) > 60  # off the grey background
        ys, xs = np.nonzero(on)
        x0, y0, x1, y1 = np.asarray(obj["box"]) * 64
        # Every object pixel inside the box, and the box at most ~1.5 px wider per side.
        assert xs.min() + 0.5 >= x0 - 1 and xs.max() + 0.5 <= x1 + 1
        assert ys.min() + 0.5 >= y0 - 1 and ys.max() + 0.5 <= y1 + 1
        assert xs.min() - x0 < 2.5 and x1 - xs.max() < 2.5
        assert ys.min() - y0 < 2.5 and y1 - ys.max() < 2.5
        assert obj["name"] in record["locca"]["caption"]


# --------------------------------------------------------------------- the decoder


def _decoder():
    dec = TextDecoder(vocab_size=lt.decoder_vocab_size(TOK.vocab_size), width=32, depth=2,
                      num_heads=2, mlp_dim=64, max_len=12)
    args = (jnp.zeros((2, 12), jnp.int32), jnp.zeros((2, 5, 24)), jnp.ones((2, 12), bool),
            jnp.zeros((2,), bool))
    return dec, dec.init(jax.random.key(0), *args)


def test_causal_rows_ignore_the_future_and_parallel_rows_do_not():
    dec, variables = _decoder()
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(1, 200, (2, 12)), jnp.int32)
    memory = jnp.asarray(rng.normal(size=(2, 5, 24)), jnp.float32)
    valid = jnp.ones((2, 12), bool)
    parallel = jnp.array([False, True])
    changed = ids.at[:, 8].set(7)
    apply = jax.jit(dec.apply)
    a = apply(variables, ids, memory, valid, parallel)
    b = apply(variables, changed, memory, valid, parallel)
    np.testing.assert_array_equal(a[0, :8], b[0, :8])  # causal: positions < 8 unchanged
    assert not np.allclose(a[1, :8], b[1, :8])  # parallel: everything sees position 8
    mask = attention_mask(jnp.array([[1, 1, 0]], bool), jnp.array([True]))
    np.testing.assert_array_equal(mask[0, 0], [[1, 1, 0]] * 3)


@pytest.fixture(scope="module")
def tiny():
    """configs/siglip2.py:tiny's model, its LocCa term, params (jitted inits), 4 images."""
    from multimodal_ssl.models.towers import build_model

    config = load_recipe(str(ROOT / "configs" / "siglip2.py"), "tiny")
    model = build_model(config, TOK.vocab_size)
    term = locca.LocCa(config.decoder, model, TOK.vocab_size)
    rng = np.random.default_rng(0)
    inputs = {"image": jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32),
              "text": jnp.zeros((4, 16), jnp.int32)}
    params = {**jax.jit(model.init)(jax.random.key(0), inputs)["params"],
              locca.PARAMS: jax.jit(term.init_params)(jax.random.key(1))}
    return config, model, term, params, inputs


def test_greedy_decoding_is_the_argmax_of_teacher_forcing_on_its_own_output(tiny):
    _, _, term, params, inputs = tiny
    image = inputs["image"][:2]
    rows = [lt.decoder_row(TOK, p, "", 64, "t") for p in ("cap:", "ref: small red circle:")]
    heads = jnp.asarray(np.stack([r["inputs"] for r in rows]))
    head_len = jnp.asarray([r["prefix_len"] for r in rows])
    out = np.asarray(jax.jit(term.greedy, static_argnames="steps")(
        params, image, heads, head_len, steps=6))
    _, tokens = term.tower.apply({"params": params[term.tower_name]}, image, return_tokens=True)
    ids = np.asarray(heads).copy()
    for i, n in enumerate(np.asarray(head_len)):
        ids[i, n : n + 6] = out[i]
    logits = jax.jit(term.decoder.apply)(
        {"params": params[locca.PARAMS]}, jnp.asarray(ids), tokens, jnp.ones((2, 64), bool),
        jnp.zeros((2,), bool))
    for i, n in enumerate(np.asarray(head_len)):  # teacher forcing: causal, so pads after
        np.testing.assert_array_equal(np.argmax(logits[i, n - 1 : n + 5], -1), out[i])


def test_the_decoder_loss_trains_the_image_tower_through_the_shared_forward_pass(tiny):
    """The step's forward returns the patch tokens next to the embeddings; the decoder's
    loss alone gives the image tower a gradient (and none to the text tower)."""
    config, model, term, params, inputs = tiny
    proc = locca.make_processor(config.decoder, TOK)
    field = {"caption": "a red circle", "objects": [{"name": "red", "box": [0, 0, 1, 1]}]}
    batch = proc.collate([proc.read(field, "w", np.random.default_rng(i)) for i in range(4)])
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(p):
        out = model.apply({"params": p}, inputs, return_tokens=("image",))
        assert out["tokens/image"].shape == (4, 16, 32)  # 16 px / patch 4: 4 x 4 patches
        return term.loss(p, out["tokens/image"], batch, jax.random.key(2))[0]

    grads = jax.jit(jax.grad(loss))(params)
    assert float(optax_norm(grads["img"])) > 0
    assert float(optax_norm(grads["txt"])) == 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


# ---------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: setattr(c.decoder, "modality", "text"), r"config.decoder.modality: 'text'"),
        (lambda c: c.decoder.tasks.update({"caption": -1.0}), r"config.decoder.tasks: weights"),
        (lambda c: setattr(c.data, "pp_train", "flip_lr|value_range(-1, 1)"),
         r"config.decoder.tasks: box tasks need boxes .* \['flip_lr'\]"),
        (lambda c: setattr(c.decoder, "num_heads", 3), r"config.decoder.num_heads: 3 does not"),
    ],
)
def test_bad_decoder_configs_name_the_key(change, match):
    config = load_recipe(str(ROOT / "configs" / "siglip2.py"), "tiny")
    change(config)
    with pytest.raises(ValueError, match=match):
        validate(config)


def test_the_locca_eval_without_a_decoder_reports_a_skip():
    from multimodal_ssl.data.modalities import make_processors
    from multimodal_ssl.evals.locca import LoccaEvaluator

    config = load_recipe(str(ROOT / "configs" / "siglip2.py"), "tiny")
    processors = make_processors(config, train=False, tokenizer=TOK)
    evaluator = LoccaEvaluator("locca", dict(config.evals.locca), processors=processors,
                               image_size=16, seed=0)
    assert evaluator.run({"image": None, "text": None}) == {"eval/locca/skipped": 1.0}
