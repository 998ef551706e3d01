"""Reference for the converter tests: a tiny random SigLIP built by transformers (no
download), its outputs, and an independent writer of big_vision's two-tower ``.npz``
layout (``params/img/...``, ``params/txt/...``, ``params/t``, ``params/b``).

The writer follows big_vision's module names (``models/vit.py``,
``models/proj/image_text/{two_towers,text_transformer}.py``) and shares no code with
``multimodal_ssl.convert``.
"""

import re

import numpy as np
import torch
from transformers import SiglipConfig, SiglipModel

IMAGE_SIZE = 16
TEXT_LEN = 12
VOCAB = 100
HEADS = {"vision_model": 2, "text_model": 4}


def make_model(seed: int = 0) -> SiglipModel:
    """Random SigLIP: image tower d=24 (2 heads), text tower d=32 (4 heads) projected to 24.
    Every weight (biases, LayerNorms, t, b included) is perturbed away from its init."""
    config = SiglipConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": HEADS["text_model"],
            "max_position_embeddings": TEXT_LEN,
            "projection_size": 24,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 1,
        },
        vision_config={
            "hidden_size": 24,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": HEADS["vision_model"],
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
        },
    )
    torch.manual_seed(seed)
    return perturbed(SiglipModel(config), seed)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` (a random transformers SigLIP / SigLIP 2) in eval mode with N(0, 0.1)
    noise on every param, ``t = log 8`` and ``b = -2.5``: far enough from the init that
    a wrong layout or scale cannot pass."""
    model = model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        model.logit_scale.fill_(np.log(8.0))
        model.logit_bias.fill_(-2.5)
    return model


def inputs(n: int = 5, text_len: int = TEXT_LEN, seed: int = 0):
    """images f32 [n, 16, 16, 3] in [-1, 1] (NHWC), tokens i32 [n, text_len] with pads."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    tokens = rng.integers(2, VOCAB, (n, text_len)).astype(np.int32)
    for i in range(n):
        tokens[i, rng.integers(1, text_len + 1) :] = 1  # right-padded with </s>
    return images, tokens


def _features(out) -> np.ndarray:
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
    return feats.numpy()


def reference(model: SiglipModel, images: np.ndarray, tokens: np.ndarray) -> dict:
    """transformers' normalised features and ``logits_per_image``."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    ids = torch.from_numpy(tokens).long()
    with torch.no_grad():
        return {
            "zimg": _features(model.get_image_features(pixel_values=pixels)),
            "ztxt": _features(model.get_text_features(input_ids=ids)),
            "logits_per_image": model(input_ids=ids, pixel_values=pixels).logits_per_image.numpy(),
        }


def _linear(prefix: str, w: np.ndarray, b: np.ndarray, heads: int | None, kind: str) -> dict:
    """A torch Linear -> big_vision Dense / attention projection params."""
    d = w.shape[1] if kind != "out" else w.shape[0]
    if kind == "dense":
        return {f"{prefix}/kernel": w.T, f"{prefix}/bias": b}
    if kind == "qkv":
        return {
            f"{prefix}/kernel": w.T.reshape(d, heads, -1),
            f"{prefix}/bias": b.reshape(heads, -1),
        }
    return {f"{prefix}/kernel": w.T.reshape(heads, -1, d), f"{prefix}/bias": b}


def big_vision_params(model: SiglipModel, scanned: bool = False) -> dict[str, np.ndarray]:
    """transformers state dict -> big_vision's flat ``params/...`` arrays."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    out: dict[str, np.ndarray] = {
        "params/t": sd.pop("logit_scale").reshape(1),
        "params/b": sd.pop("logit_bias").reshape(1),
    }
    towers = {"vision_model": ("img", "Transformer"), "text_model": ("txt", "Encoder_0")}
    for hf_tower, (bv, enc) in towers.items():
        heads = HEADS[hf_tower]
        p = f"params/{bv}"
        for i in range(2):
            h = f"{hf_tower}.encoder.layers.{i}"
            blk = f"{p}/{enc}/encoderblock_{i}"
            for n in (1, 2):
                out[f"{blk}/LayerNorm_{n - 1}/scale"] = sd.pop(f"{h}.layer_norm{n}.weight")
                out[f"{blk}/LayerNorm_{n - 1}/bias"] = sd.pop(f"{h}.layer_norm{n}.bias")
            for hf_name, bv_name in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
                w = sd.pop(f"{h}.self_attn.{hf_name}_proj.weight")
                b = sd.pop(f"{h}.self_attn.{hf_name}_proj.bias")
                kind = "out" if hf_name == "out" else "qkv"
                out.update(
                    _linear(f"{blk}/MultiHeadDotProductAttention_0/{bv_name}", w, b, heads, kind)
                )
            for n in (1, 2):
                w, b = sd.pop(f"{h}.mlp.fc{n}.weight"), sd.pop(f"{h}.mlp.fc{n}.bias")
                out.update(_linear(f"{blk}/MlpBlock_0/Dense_{n - 1}", w, b, None, "dense"))
    v = "vision_model"
    out["params/img/embedding/kernel"] = sd.pop(f"{v}.embeddings.patch_embedding.weight").transpose(
        2, 3, 1, 0
    )
    out["params/img/embedding/bias"] = sd.pop(f"{v}.embeddings.patch_embedding.bias")
    out["params/img/pos_embedding"] = sd.pop(f"{v}.embeddings.position_embedding.weight")[None]
    out["params/img/Transformer/encoder_norm/scale"] = sd.pop(f"{v}.post_layernorm.weight")
    out["params/img/Transformer/encoder_norm/bias"] = sd.pop(f"{v}.post_layernorm.bias")
    m = "params/img/MAPHead_0"
    out[f"{m}/probe"] = sd.pop(f"{v}.head.probe")
    in_w = np.split(sd.pop(f"{v}.head.attention.in_proj_weight"), 3)
    in_b = np.split(sd.pop(f"{v}.head.attention.in_proj_bias"), 3)
    for j, name in enumerate(("query", "key", "value")):
        out.update(
            _linear(f"{m}/MultiHeadDotProductAttention_0/{name}", in_w[j], in_b[j], 2, "qkv")
        )
    w, b = (
        sd.pop(f"{v}.head.attention.out_proj.weight"),
        sd.pop(f"{v}.head.attention.out_proj.bias"),
    )
    out.update(_linear(f"{m}/MultiHeadDotProductAttention_0/out", w, b, 2, "out"))
    out[f"{m}/LayerNorm_0/scale"] = sd.pop(f"{v}.head.layernorm.weight")
    out[f"{m}/LayerNorm_0/bias"] = sd.pop(f"{v}.head.layernorm.bias")
    for n in (1, 2):
        w, b = sd.pop(f"{v}.head.mlp.fc{n}.weight"), sd.pop(f"{v}.head.mlp.fc{n}.bias")
        out.update(_linear(f"{m}/MlpBlock_0/Dense_{n - 1}", w, b, None, "dense"))
    t = "text_model"
    out["params/txt/Embed_0/embedding"] = sd.pop(f"{t}.embeddings.token_embedding.weight")
    out["params/txt/pos_embedding"] = sd.pop(f"{t}.embeddings.position_embedding.weight")[None]
    out["params/txt/Encoder_0/encoder_norm/scale"] = sd.pop(f"{t}.final_layer_norm.weight")
    out["params/txt/Encoder_0/encoder_norm/bias"] = sd.pop(f"{t}.final_layer_norm.bias")
    out.update(
        _linear(
            "params/txt/head", sd.pop(f"{t}.head.weight"), sd.pop(f"{t}.head.bias"), None, "dense"
        )
    )
    leftover = [k for k in sd if not k.endswith("position_ids")]
    assert not leftover, leftover
    return _scan(out) if scanned else out


def _scan(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's ``scan=True`` layout: ``encoderblock_{i}/x`` -> ``encoderblock/x [depth]``."""
    out, stacked = {}, {}
    for key, value in flat.items():
        m = re.match(r"(.*)/encoderblock_(\d+)/(.*)", key)
        if m is None:
            out[key] = value
        else:
            stacked.setdefault(f"{m.group(1)}/encoderblock/{m.group(3)}", {})[int(m.group(2))] = (
                value
            )
    for key, layers in stacked.items():
        out[key] = np.stack([layers[i] for i in sorted(layers)])
    return out
