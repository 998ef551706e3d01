"""Data, FSDP and tensor-parallel meshes (and GradCache micro-batches) train exactly like
one device: same losses for 10 steps, params and optimizer state sharded as configured,
orbax checkpoints of sharded states restore (also onto another mesh). The same holds for
an audio/text model (audio tower, FSDP over 8 devices, ring loss)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from multimodal_ssl.builder import Experiment
from multimodal_ssl.checkpointing import Checkpointer, abstract_like
from multimodal_ssl.config import set_towers
from multimodal_ssl.data.tokenizers import Tokenizer
from multimodal_ssl.models.layout import path_str
from multimodal_ssl.recipes import load_recipe
from multimodal_ssl.sharding import make_mesh, to_global
from multimodal_ssl.train_state import TrainState, fresh_health, state_shardings
from tests.test_train import ROOT

STEPS, VOCAB = 10, 257
MLP_IN = "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"  # [32, 64]
QUERY = "txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"  # [32, 2, 16]
ATT_OUT = "img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel"  # [2, 16, 32]
EMBED = "txt/Embed_0/embedding"  # [257, 32]: 257 divides by nothing

# mesh -> {param: expected PartitionSpec} (written out by hand, not derived by the code).
CASES = {
    "data8": ({"data": 8}, 1, {MLP_IN: P(), QUERY: P(), ATT_OUT: P(), EMBED: P()}),
    "fsdp8": (
        {"data": 1, "fsdp": 8},
        1,
        {
            MLP_IN: P(None, "fsdp"),
            QUERY: P("fsdp"),
            ATT_OUT: P(None, None, "fsdp"),
            EMBED: P(None, "fsdp"),
        },
    ),
    # with GradCache (4 micro-batches of 1 row per batch shard), which must not change losses
    "data2_fsdp2_model2_gradcache4": (
        {"data": 2, "fsdp": 2, "model": 2},
        4,
        {
            MLP_IN: P("fsdp", "model"),
            QUERY: P("fsdp", "model"),
            ATT_OUT: P("model", None, "fsdp"),
            EMBED: P(None, "fsdp"),
        },
    ),
    "data4_model2": (
        {"data": 4, "model": 2},
        1,
        {MLP_IN: P(None, "model"), QUERY: P(None, "model"), ATT_OUT: P("model"), EMBED: P()},
    ),
}


class _Vocab(Tokenizer):
    """A tokenizer of VOCAB ids (the batches are random ids; nothing is encoded)."""

    vocab_size = VOCAB

    def _ids(self, text):
        raise NotImplementedError

    def _text(self, ids):
        raise NotImplementedError


def _config(mesh_sizes, microbatches=1, audio=False):
    config = load_recipe(str(ROOT / "configs" / "siglip.py"), "tiny")  # ring loss
    config.mesh.update({"data": 1, "fsdp": 1, "model": 1, **mesh_sizes})
    config.sharding.fsdp_min_size = 0  # the tiny model's params are all small
    config.model.image.pool, config.model.text.pool = "gap", "mean"  # fewer params to compile
    if audio:  # an audio/text model: 0.25 s clips, 20 frames x 16 mel bins, patch 4
        tiny = {"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2}
        audio_tower = {"type": "audio", "patch_size": 4, **tiny}
        set_towers(config, {"audio": audio_tower, "text": config.model.towers.text})
        config.data.pp = {"audio": "resample(16000)|crop(0.25)|log_mel(16, 25, 12.5)"}
        config.loss.pairs = "audio-text"
    config.optim.microbatches = microbatches
    return config


def _experiment(config, devices):
    return Experiment(config, devices, tokenizer=_Vocab(config.data.max_text_len))


def _batches(exp):
    """STEPS fixed random batches: ids for int inputs, uniform floats for the others."""
    rng = np.random.default_rng(0)
    n = exp.config.batch_size

    def draw(spec):
        shape = (n, *spec.shape[1:])
        if np.issubdtype(spec.dtype, np.integer):
            return rng.integers(0, VOCAB, shape).astype(spec.dtype)
        return rng.uniform(-1, 1, shape).astype(spec.dtype)

    return [{m: draw(s) for m, s in exp.input_specs.items()} for _ in range(STEPS)]


def _train(config, devices, initial_params=None):
    """STEPS steps on fixed batches; returns (losses, final state, mesh)."""
    exp = _experiment(config, devices)
    if initial_params is None:
        state = exp.init_state()
    else:  # the reference's initial state, placed by this mesh's rules (no init compile)
        abstract = jax.eval_shape(lambda: initial_params)
        shardings = state_shardings(abstract, exp.mesh, config.sharding)
        state = jax.device_put(initial_params, shardings)
    step = exp.train_step(state)
    losses = []
    for batch in _batches(exp):
        state, metrics = step(state, to_global(batch, exp.mesh))
        losses.append(float(metrics["train/loss"]))
    return np.array(losses), state, exp.mesh


def _padded(spec, ndim):
    return (*spec, *([None] * (ndim - len(spec))))


def _leaf(tree, suffix):
    hits = [x for p, x in jax.tree_util.tree_leaves_with_path(tree) if path_str(p).endswith(suffix)]
    assert hits, suffix
    return hits


def _reference(config):
    """Random initial state (numpy: no init compile) and its 1-device loss curve."""
    exp = _experiment(config, jax.devices()[:1])
    tx, _ = exp.optimizer
    inputs = {m: jax.numpy.zeros(s.shape, s.dtype) for m, s in exp.input_specs.items()}
    shapes = jax.eval_shape(lambda: exp.model.init(jax.random.key(0), inputs)["params"])
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    params.update(jax.device_get(exp.objective.init_params()))
    opt_state = jax.device_get(jax.jit(tx.init)(params))
    key = np.asarray(jax.random.key_data(jax.random.key(0)))
    initial = TrainState(
        step=np.zeros((), np.int32),
        params=params,
        opt_state=opt_state,
        rng=key,
        health=jax.device_get(fresh_health()),
    )
    losses, _, _ = _train(config, jax.devices()[:1], initial)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    return initial, losses


@pytest.fixture(scope="module")
def reference():
    return _reference(_config({}))


def test_audio_tower_fsdp8_ring_trains_like_one_device():
    """The audio tower (ViT over log-mel patches) with the text tower: FSDP over 8
    emulated devices and the ring loss reproduce the 1-device losses of 10 steps."""
    initial, ref_losses = _reference(_config({}, audio=True))
    config = _config({"data": 1, "fsdp": 8}, audio=True)
    assert config.loss.impl == "ring"
    losses, state, _ = _train(config, jax.devices()[:8], initial)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    kernel = _leaf(state.params, "audio/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel")[0]
    assert _padded(kernel.sharding.spec, 2) == (None, "fsdp")


@pytest.mark.parametrize("case", list(CASES))
def test_mesh_trains_like_one_device_with_configured_shardings(reference, case, tmp_path):
    sizes, microbatches, expected = CASES[case]
    initial, ref_losses = reference
    config = _config(sizes, microbatches)
    losses, state, mesh = _train(config, jax.devices()[:8], initial)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)

    for path, spec in expected.items():
        param = _leaf(state.params, path)[0]
        spec = _padded(spec, param.ndim)
        assert _padded(param.sharding.spec, param.ndim) == spec, (path, param.sharding.spec)
        shard = param.addressable_shards[0].data.shape
        want = [n // (mesh.shape[a] if a else 1) for n, a in zip(param.shape, spec, strict=True)]
        assert list(shard) == want, (path, shard)
        # Optimizer moments follow the param: Muon's momentum for the kernels, Adam's mu
        # and nu for the embedding table (and for everything under AdamW).
        moments = _leaf(state.opt_state, path)
        assert len(moments) == (1 if config.optim.name == "muon" and path != EMBED else 2)
        assert all(_padded(m.sharding.spec, m.ndim) == spec for m in moments)
    assert state.params["t"].sharding.spec == P()

    if microbatches > 1:  # orbax round trip of a sharded state
        ckpt = Checkpointer(str(tmp_path), keep=1)
        ckpt.save(STEPS, state, _FakeIterator())
        ckpt.close()
        ckpt = Checkpointer(str(tmp_path), keep=1)
        restored, step = ckpt.restore(abstract_like(state), _FakeIterator())
        one = make_mesh({"data": 1}, jax.devices()[:1])
        on_one = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=jax.sharding.NamedSharding(one, P())
            ),
            abstract_like(state),
        )
        single, _ = ckpt.restore(on_one, _FakeIterator())
        ckpt.close()
        assert step == STEPS
        for a, b, c in zip(
            jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(single), strict=True
        ):
            assert b.sharding == a.sharding
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
            np.testing.assert_array_equal(np.asarray(c), np.asarray(a))


class _FakeIterator:
    """Stands in for the grain iterator in checkpoints (its own tests live elsewhere)."""

    def get_state(self):
        return b"{}"

    def set_state(self, state):
        assert state == b"{}"

    def start_prefetch(self):
        pass
