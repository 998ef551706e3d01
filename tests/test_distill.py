"""SigLIP 2 self-distillation (multimodal_ssl/distill.py, losses/distill.py): the losses
against a naive float64 reference, the EMA and centering updates, no gradient to the
teacher, the ViT options, and a run of configs/siglip2.py:tiny that switches the terms
on at the configured step (with the LocCa decoder on throughout) and resumes from a
checkpoint bit for bit."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import Checkpointer, abstract_like
from multimodal_ssl.config import validate
from multimodal_ssl.distill import SelfDistill, default_config
from multimodal_ssl.losses import distill as dl
from multimodal_ssl.models.towers import MultiTower
from multimodal_ssl.models.vit import ViT
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import to_global
from multimodal_ssl.train import _next_batch

ROOT = Path(__file__).resolve().parents[1]


# ----- naive float64 reference: loops, hand-derived gradients ------------------------
def _ce_ref(t, s, c, tau_t, tau_s):
    """H(t, s) and dH/ds for one row (python loops)."""
    k = len(t)
    a = [(t[i] - c[i]) / tau_t for i in range(k)]
    ma = max(a)
    p = [math.exp(v - ma) for v in a]
    p = [v / sum(p) for v in p]
    u = [s[i] / tau_s for i in range(k)]
    mu = max(u)
    lse = mu + math.log(sum(math.exp(v - mu) for v in u))
    q = [math.exp(v - lse) for v in u]
    value = -sum(p[i] * (u[i] - lse) for i in range(k))
    grad = [(q[i] - p[i]) / tau_s for i in range(k)]
    return value, np.array(grad)


def _local_global_ref(s, t, c, tau_t, tau_s):
    b, n, _ = s.shape
    value, grad = 0.0, np.zeros_like(s)
    for i in range(b):
        for j in range(n):
            h, g = _ce_ref(t[i], s[i, j], c, tau_t, tau_s)
            value += h / (b * n)
            grad[i, j] = g / (b * n)
    return value, grad


def _masked_ref(s, t, mask, c, tau_t, tau_s):
    count = max(int(mask.sum()), 1)
    value, grad = 0.0, np.zeros_like(s)
    for i, j in zip(*np.nonzero(mask), strict=True):
        h, g = _ce_ref(t[i, j], s[i, j], c, tau_t, tau_s)
        value += h / count
        grad[i, j] = g / count
    return value, grad


def test_losses_match_a_float64_reference_in_value_and_gradient(x64):
    rng = np.random.default_rng(0)
    k, tau_t, tau_s = 7, 0.04, 0.1
    c = rng.normal(size=k)
    s_local, t_global = 3 * rng.normal(size=(3, 2, k)), 3 * rng.normal(size=(3, k))
    s_patch, t_patch = 3 * rng.normal(size=(2, 5, k)), 3 * rng.normal(size=(2, 5, k))
    mask = rng.random((2, 5)) < 0.5
    cases = [
        (lambda s, t: dl.local_global_loss(s, t, c, tau_t, tau_s), _local_global_ref,
         s_local, t_global, (c, tau_t, tau_s)),
        (lambda s, t: dl.masked_patch_loss(s, t, mask, c, tau_t, tau_s), _masked_ref,
         s_patch, t_patch, (mask, c, tau_t, tau_s)),
    ]
    for fn, ref, s, t, rest in cases:
        value, (gs, gt) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(s, t)
        want, want_grad = ref(s, t, *rest)
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(gs, want_grad, rtol=1e-6, atol=1e-6)
        assert not np.any(gt)  # the teacher's logits get no gradient
    with pytest.raises(ValueError, match=r"student \[B, n, K\] and teacher \[B, K\]"):
        dl.local_global_loss(s_local, t_patch, c, tau_t, tau_s)


def _check_ema(got, teacher, student, m):
    """``got`` is ``m * teacher + (1 - m) * student`` (evaluated in float64) up to the
    rounding of float32 arithmetic: XLA may fuse it into a multiply-add (one rounding
    less than numpy's float32 evaluation), so bitwise equality with numpy is not the
    test; bitwise reproducibility of the run is (the resume test)."""
    terms = m * np.abs(np.float64(teacher)) + (1 - m) * np.abs(np.float64(student))
    exact = m * np.float64(teacher) + (1 - m) * np.float64(student)
    assert got.dtype == np.float32
    bound = 1.5 * np.finfo(np.float32).eps * terms  # two products and a sum, rounded
    assert np.all(np.abs(got - exact) <= bound)


def test_ema_center_and_patch_mask_are_exact():
    rng = np.random.default_rng(1)
    t = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    t = jax.tree.map(lambda x: x.astype(np.float32), t)
    s = jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), t)
    out = jax.jit(dl.ema, static_argnums=2)(t, s, 0.999)
    for k in t:
        _check_ema(out[k], t[k], s[k], 0.999)
    center, logits = np.zeros(4, np.float32), rng.normal(size=(2, 3, 4)).astype(np.float32)
    got = dl.update_center(jnp.array(center), jnp.array(logits), 0.9)
    np.testing.assert_allclose(got, 0.1 * logits.reshape(6, 4).mean(0), rtol=1e-6)
    mask = np.asarray(dl.random_patch_mask(jax.random.key(0), 4, 10, 0.5))
    assert (mask.sum(1) == 5).all() and not (mask == mask[0]).all()


def _tiny_vit(**kw):
    return ViT(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4, num_classes=8, **kw)


def test_vit_tokens_and_patch_mask_leave_the_default_output_unchanged():
    image = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    vit = _tiny_vit(pool="tok")  # the class token is left out of the patch tokens
    params = jax.jit(vit.init)(jax.random.key(1), image)
    none = np.zeros((2, 4), bool)
    some = none.copy()
    some[:, 1] = True
    token = jnp.ones(16)

    @jax.jit
    def outputs(params, image):
        def tokens(mask):
            return vit.apply(params, image, patch_mask=mask, mask_token=token, return_tokens=True)

        return vit.apply(params, image), vit.apply(params, image, return_tokens=True), \
            tokens(none), tokens(some)

    out, (pooled, plain), (_, unmasked), (_, masked) = outputs(params, image)
    assert np.array_equal(out, pooled) and plain.shape == (2, 4, 16)
    assert np.array_equal(unmasked, plain)
    assert not np.allclose(masked[:, 1], plain[:, 1])
    with pytest.raises(ValueError, match=r"ViT.patch_mask: expected bool \[2, 4\]"):
        jax.eval_shape(lambda: vit.apply(params, image, patch_mask=none[:, :3], mask_token=token))


def test_the_teacher_gets_no_gradient():
    towers = {"image": {"type": "vit", "width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                        "patch_size": 4, "posemb": "sincos2d", "pool": "gap"}}
    cfg = {**default_config().to_dict(), "local_weight": 1.0, "masked_weight": 0.5,
           "num_local": 2, "head_hidden": 16, "head_bottleneck": 8, "prototypes": 8}
    sd = SelfDistill(cfg, MultiTower(towers=towers, embed_dim=8), total_steps=10)
    image = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)  # shapes only: nothing runs
    batch = {"image": image, "image_local": jax.ShapeDtypeStruct((2, 2, 4, 4, 3), jnp.float32)}

    def init(rng):
        student = {"img": sd.tower.init(rng, jnp.zeros(image.shape))["params"]}
        student["distill"] = sd.init_params(rng, 8)
        return student, sd.init_teacher(student)

    student, teacher = jax.eval_shape(init, jax.random.key(0))

    def loss(student, teacher, batch):
        return sd.losses(student, teacher, batch, jax.random.key(4))[0]

    # The jaxpr of the gradient (traced, not compiled): the teacher's gradients depend on
    # no input (they are constant zeros); every student gradient depends on the inputs.
    closed = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(student, teacher, batch)
    g_student, g_teacher = jax.tree.unflatten(
        jax.tree.structure((student, teacher)), closed.jaxpr.outvars
    )
    assert not any(_depends_on_inputs(closed.jaxpr, v) for v in jax.tree.leaves(g_teacher))
    assert all(_depends_on_inputs(closed.jaxpr, v) for v in jax.tree.leaves(g_student))


def _depends_on_inputs(jaxpr, var) -> bool:
    """Whether ``var`` may depend on an input of ``jaxpr`` (conservative: an equation's
    output depends on all its operands)."""
    producer = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    inputs, stack, seen = set(jaxpr.invars), [var], set()
    while stack:
        v = stack.pop()
        if isinstance(v, jax.extend.core.Literal) or v in seen:
            continue
        seen.add(v)
        if v in inputs:
            return True
        if v in producer:
            stack.extend(producer[v].invars)
    return False


def _siglip2_tiny():
    config = load_recipe(str(ROOT / "configs" / "siglip2.py"), "tiny")
    config.evals = {}
    config.loss.impl = "global"  # less to compile than the recipe's ring and Muon
    config.optim.name = "adamw"
    return config


def test_a_learned_position_embedding_refuses_smaller_local_crops():
    config = _siglip2_tiny()
    config.model.towers.image.posemb = "learn"
    with pytest.raises(ValueError, match=r"config.distill.local_size: 8 px differs"):
        validate(config)


_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _leaves_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_siglip2_switches_on_at_its_step_and_resumes_bitwise_with_the_teacher(tmp_path):
    """6 steps, on from step index 3 (start 0.5); a checkpoint after step 4; a fresh loader
    and state restored from it run steps 5-6 exactly as the uninterrupted run did."""
    config = _siglip2_tiny()
    exp = Experiment(config, jax.devices()[:1])
    sd, m = exp.distill, config.distill.ema
    locca_keys = tuple(f"locca/{k}" for k in ("inputs", "labels", "weights", "valid",
                                               "parallel", "task"))
    assert sd.start_step == 3
    assert exp.batch_keys == ("image", "text", "image_local", *locca_keys)  # decoder on too
    loader = iter(exp.train_loader())
    state = exp.init_state()
    abstract = abstract_like(state)  # what a fresh process's init_state() gives
    batch = _next_batch(loader, exp)
    # The step compiled once, at XLA's lowest optimisation level (compile time halves;
    # both runs below use this one executable, so bitwise equality still means resume).
    step = exp.train_step(state).lower(state, to_global(batch, exp.mesh)).compile(_FAST)
    checkpointer = Checkpointer(str(tmp_path), keep=3)
    history, metrics = [jax.device_get(state)], []
    for i in range(1, 7):
        batch = batch if i == 1 else _next_batch(loader, exp)
        assert batch["image_local"].shape == (16, 2, 8, 8, 3)
        assert batch["image_local"].dtype == np.float32 and np.abs(batch["image_local"]).max() <= 1
        state, out = step(state, to_global(batch, exp.mesh))
        history.append(jax.device_get(state))
        metrics.append(jax.device_get(out))
        if i == 4:
            checkpointer.save(4, state, loader)
            checkpointer.wait()
    checkpointer.close()
    loader.close()

    # Off for the first 3 steps: zero losses, head and teacher untouched.
    for i, out in enumerate(metrics, start=1):
        for name in ("train/loss/local_global", "train/loss/masked"):
            assert (out[name] > 0) == (i >= 4), (i, name)
        np.testing.assert_allclose(
            out["train/loss"],
            out["train/loss/image_text"] + out["train/loss/local_global"]
            + 0.25 * out["train/loss/masked"] + out["train/loss/locca"], rtol=1e-6)
    assert _leaves_equal(history[3].params["distill"], history[0].params["distill"])
    assert _leaves_equal(history[3].teacher, history[0].teacher)
    assert not _leaves_equal(history[4].params["distill"], history[3].params["distill"])
    # EMA after each on-step; at the start step the teacher first becomes the student.
    for i, before in ((4, sd.student_subset(history[3].params)), (5, history[4].teacher["params"])):
        after = sd.student_subset(history[i].params)
        jax.tree.map(lambda g, t, s: _check_ema(g, t, s, m), history[i].teacher["params"],
                     before, after)
    assert np.any(history[4].teacher["center"]) and np.any(history[4].teacher["center_patch"])

    # Resume: a fresh loader and state (as a new process builds them), restored from step 4.
    loader = iter(exp.train_loader())
    checkpointer = Checkpointer(str(tmp_path), keep=3)
    state, at = checkpointer.restore(abstract, loader)
    checkpointer.close()
    assert at == 4 and _leaves_equal(jax.device_get(state), history[4])
    for i in (5, 6):
        state, out = step(state, to_global(_next_batch(loader, exp), exp.mesh))
        assert _leaves_equal(jax.device_get(out), metrics[i - 1]), i
    loader.close()
    assert _leaves_equal(jax.device_get(state), history[6])
