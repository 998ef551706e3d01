"""transformers SigLIP folder -> pretrained.load: embeddings and logits equal to
transformers' own on a random model (no download), shipped tokenizers, bad inputs."""

import io
import json
import pickle
import shutil

import numpy as np
import pytest
import sentencepiece
import siglip_reference as ref
from safetensors.numpy import load_file, save_file
from transformers import PreTrainedTokenizerFast, SiglipTokenizer

from multimodal_ssl import pretrained
from multimodal_ssl.convert import load_checkpoint

TEXTS = ["A photo of a CAT.", "two  dogs, playing!", "the big blue square " * 5, ""]


@pytest.fixture(scope="module")
def hf_model():
    return ref.make_model()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip_hf")
    hf_model.save_pretrained(path)
    return path


@pytest.mark.parametrize("text_len", [ref.TEXT_LEN, 7])
def test_embeddings_and_logits_equal_transformers(hf_model, hf_dir, text_len):
    images, tokens = ref.inputs(n=5, text_len=text_len)
    want = ref.reference(hf_model, images, tokens)
    enc = pretrained.load(str(hf_dir))
    zimg, ztxt = enc.embed_images(images), enc.embed_texts(tokens)
    assert zimg.shape == (5, 24) and ztxt.shape == (5, 24)
    np.testing.assert_allclose(zimg, want["zimg"], atol=1e-4)
    np.testing.assert_allclose(ztxt, want["ztxt"], atol=1e-4)
    np.testing.assert_allclose(enc.logits(zimg, ztxt), want["logits_per_image"], atol=1e-4)
    np.testing.assert_allclose([enc.t, enc.b], [np.log(8.0), -2.5], rtol=1e-6)


def test_config_is_read_off_the_checkpoint(hf_dir):
    ckpt = load_checkpoint(str(hf_dir))
    image, text = ckpt.model.image, ckpt.model.text
    assert (image.width, image.depth, image.mlp_dim, image.num_heads) == (24, 2, 48, 2)
    assert (image.patch_size, image.pool, image.num_classes) == (4, "map", None)
    assert (text.width, text.mlp_dim, text.num_heads, text.num_classes) == (32, 64, 4, 24)
    assert (text.vocab_size, text.max_len, text.pool) == (ref.VOCAB, ref.TEXT_LEN, "last")
    assert image.gelu_approximate and text.gelu_approximate
    assert (ckpt.image_size, ckpt.max_text_len, ckpt.model.embed_dim) == (16, ref.TEXT_LEN, 24)


def _spiece_model(path):
    sentences = [t.lower() for t in TEXTS] + ["a small red circle in the top left"] * 5
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 10),
        model_writer=model,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def test_shipped_sentencepiece_tokenizer_matches_transformers(hf_dir, tmp_path):
    folder = tmp_path / "with_spm"
    shutil.copytree(hf_dir, folder)
    _spiece_model(folder / "spiece.model")
    enc = pretrained.load(str(folder))
    want = SiglipTokenizer(vocab_file=str(folder / "spiece.model"))(
        TEXTS, padding="max_length", max_length=ref.TEXT_LEN, truncation=True
    ).input_ids
    got = enc.tokenize(TEXTS)
    np.testing.assert_array_equal(got, want)
    assert got.shape == (len(TEXTS), ref.TEXT_LEN) and got[3, 0] == 1  # "" -> </s> only
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(enc.tokenizer)).encode(TEXTS), want)
    decoded = enc.tokenizer.decode(got)[0]  # canonicalised, truncated at 11 pieces
    assert len(decoded) > 5 and "a photo of a cat".startswith(decoded)


def test_shipped_tokenizer_json_matches_transformers(hf_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "photo", "of", "cat"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    folder = tmp_path / "with_json"
    shutil.copytree(hf_dir, folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    texts = ["a photo of a cat", "a dog", "a " * 20]
    want = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>"
    )(texts, padding="max_length", max_length=ref.TEXT_LEN, truncation=True).input_ids
    enc = pretrained.load(str(folder))
    np.testing.assert_array_equal(enc.tokenize(texts), want)
    assert enc.tokenizer.pad_id == 0 and want[2][-1] == 1  # truncation keeps </s>


def test_bad_checkpoints_and_inputs_name_the_problem(hf_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(hf_dir, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["text_model.head.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="text_model.head.bias"):
        pretrained.load(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type 'clip'"):
        pretrained.load(str(folder))
    with pytest.raises(ValueError, match="not a transformers SigLIP folder"):
        pretrained.load(str(tmp_path))
    enc = pretrained.load(str(hf_dir))
    with pytest.raises(ValueError, match="images: expected"):
        enc.embed_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="token_ids: need"):
        enc.embed_texts(np.full((2, 4), ref.VOCAB, np.int32))
    with pytest.raises(ValueError, match="token_ids: need"):
        enc.embed_texts(np.zeros((2, ref.TEXT_LEN + 1), np.int32))
