"""big_vision two-tower .npz -> pretrained.load: the npz is written by an independent
writer from a random transformers SigLIP, and the embeddings must equal transformers'."""

import numpy as np
import pytest
import siglip_reference as ref

from multimodal_ssl import pretrained
from multimodal_ssl.convert import load_npz, save_npz


@pytest.fixture(scope="module")
def hf_model():
    return ref.make_model(seed=1)


@pytest.mark.parametrize("scanned", [False, True])
def test_npz_embeddings_and_logits_equal_transformers(hf_model, tmp_path, scanned):
    path = tmp_path / "siglip.npz"
    np.savez(path, **ref.big_vision_params(hf_model, scanned=scanned))
    images, tokens = ref.inputs(n=6, seed=3)
    want = ref.reference(hf_model, images, tokens)
    enc = pretrained.load(str(path))
    zimg, ztxt = enc.embed_images(images), enc.embed_texts(tokens)
    np.testing.assert_allclose(zimg, want["zimg"], atol=1e-4)
    np.testing.assert_allclose(ztxt, want["ztxt"], atol=1e-4)
    np.testing.assert_allclose(enc.logits(zimg, ztxt), want["logits_per_image"], atol=1e-4)
    assert enc.tokenizer is None
    assert (enc.image_size, enc.max_text_len, enc.config.embed_dim) == (16, ref.TEXT_LEN, 24)


def test_save_npz_round_trips_exactly(hf_model, tmp_path):
    src = tmp_path / "a.npz"
    np.savez(src, **ref.big_vision_params(hf_model))
    ckpt = load_npz(str(src))
    save_npz(ckpt.params, str(tmp_path / "b.npz"))
    with np.load(src) as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bad_npz_names_file_and_paths(hf_model, tmp_path):
    flat = ref.big_vision_params(hf_model)
    path = tmp_path / "bad.npz"
    np.savez(path, **{**flat, "params/txt/head/bias": np.zeros(7, np.float32)})
    with pytest.raises(ValueError, match=r"bad\.npz.*txt/head/bias: shape \(7,\), expected"):
        load_npz(str(path))
    np.savez(path, **{k: v for k, v in flat.items() if "MAPHead_0/LayerNorm_0" not in k})
    with pytest.raises(ValueError, match="missing img/MAPHead_0/LayerNorm_0/scale"):
        load_npz(str(path))
    np.savez(path, **{**flat, "opt/state": np.zeros(1)})
    with pytest.raises(ValueError, match="unexpected arrays"):
        load_npz(str(path))
