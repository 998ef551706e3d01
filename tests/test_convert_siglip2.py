"""transformers SigLIP 2 NaFlex folder -> pretrained.load: image embeddings for images of
several aspect ratios (unresized), text embeddings and logits equal to transformers' own
on a random ``Siglip2Model`` (no download); the position-embedding resize equals torch's
(value and gradient); one compilation for mixed sizes; ``preprocess`` equals transformers'
image processor."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import siglip_reference as ref
import torch
import torch.nn.functional as F
from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model
from transformers.models.siglip2.image_processing_pil_siglip2 import (
    convert_image_to_patches,
    pad_along_first_dim,
)
from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

from multimodal_ssl import pretrained
from multimodal_ssl.data import naflex
from multimodal_ssl.models.naflex import resize_posemb
from multimodal_ssl.models.vit import ViT

PATCH = 4
GRID = 4  # 16 learned positions
MAX_PATCHES = 24  # > 16: some images upsample the position grid
# (H, W) of images used as they are: 2x3, 4x1, 5x4 (upsampled rows), 1x6, 3x3 patches.
SIZES = [(8, 12), (16, 4), (20, 16), (4, 24), (12, 12)]


def _make_model() -> Siglip2Model:
    """Random SigLIP 2: the towers of ``siglip_reference.make_model``, a NaFlex image
    tower with a 4x4 position grid; every weight perturbed away from its init."""
    config = Siglip2Config(
        text_config=ref.make_model().config.text_config.to_dict(),
        vision_config={
            "hidden_size": 24,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_patches": GRID * GRID,
            "patch_size": PATCH,
        },
    )
    torch.manual_seed(0)
    return ref.perturbed(Siglip2Model(config))


@pytest.fixture(scope="module")
def hf_model():
    return _make_model()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip2_hf")
    hf_model.save_pretrained(path)
    Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def enc(hf_dir):
    return pretrained.load(str(hf_dir))


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (h, w, 3)).astype(np.float32) for h, w in sizes]


def _hf_inputs(images):
    """transformers' own patchify and padding (image_processing_pil_siglip2) of [H, W, 3]."""
    patches, masks = zip(
        *(
            pad_along_first_dim(convert_image_to_patches(x.transpose(2, 0, 1), PATCH), MAX_PATCHES)
            for x in images
        ),
        strict=True,
    )
    return {
        "pixel_values": torch.from_numpy(np.stack(patches)),
        "pixel_attention_mask": torch.from_numpy(np.stack(masks)),
        "spatial_shapes": torch.tensor(
            [(x.shape[0] // PATCH, x.shape[1] // PATCH) for x in images]
        ),
    }


def _unit(x: torch.Tensor) -> np.ndarray:
    return (x / x.norm(dim=-1, keepdim=True)).numpy()


def test_embeddings_and_logits_equal_transformers(hf_model, enc):
    images = _images(SIZES)
    _, tokens = ref.inputs(n=len(SIZES))
    inputs = _hf_inputs(images)
    ids = torch.from_numpy(tokens).long()
    with torch.no_grad():
        want_img = _unit(hf_model.get_image_features(**inputs).pooler_output)
        want_txt = _unit(hf_model.get_text_features(input_ids=ids).pooler_output)
        want_logits = hf_model(input_ids=ids, **inputs).logits_per_image.numpy()
    zimg, ztxt = enc.embed_images(images), enc.embed_texts(tokens)
    assert enc.max_num_patches == MAX_PATCHES and zimg.shape == (len(SIZES), 24)
    np.testing.assert_allclose(zimg, want_img, atol=1e-4)
    np.testing.assert_allclose(ztxt, want_txt, atol=1e-4)
    np.testing.assert_allclose(enc.logits(zimg, ztxt), want_logits, atol=1e-3)
    np.testing.assert_allclose([enc.t, enc.b], [np.log(8.0), -2.5], rtol=1e-6)
    assert not np.allclose(zimg[0], zimg[4], atol=0.05)  # the images do differ

    # One compilation serves other sizes; padded patches do not change an embedding.
    again = enc.embed_images(_images([(4, 4), (24, 16), (12, 8), (8, 8), (20, 20)], seed=1))
    assert enc._embedder.naflex_fn._cache_size() == 1
    batch = naflex.batch_patches(images, PATCH, MAX_PATCHES, enc._embedder.padded_size(5))
    batch["patches"][~batch["mask"]] = 7.0
    np.testing.assert_allclose(enc._embedder.embed_naflex(batch, 5), zimg, atol=1e-6)
    assert enc._embedder.naflex_fn._cache_size() == 1 and again.shape == zimg.shape


def test_posemb_resize_equals_torch_value_and_gradient():
    side, d, length = 6, 5, 40
    rng = np.random.default_rng(0)
    grid = rng.normal(size=(side, side, d)).astype(np.float32)
    shapes = np.array([(2, 3), (9, 4), (1, 1), (6, 6), (3, 10), (1, 40), (13, 2)], np.int32)
    cot = rng.normal(size=(len(shapes), length, d)).astype(np.float32)
    table = jnp.asarray(grid.reshape(1, side * side, d))
    got, vjp = jax.vjp(lambda t: resize_posemb(t, shapes, length), table)
    (grad,) = vjp(jnp.asarray(cot))
    x = torch.from_numpy(grid).requires_grad_(True)
    want = Siglip2VisionEmbeddings.resize_positional_embeddings(
        x, torch.from_numpy(shapes).long(), length
    )
    (want * torch.from_numpy(cot)).sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad).reshape(side, side, d), x.grad.numpy(), atol=1e-4)
    # An independent check of the kernel: torch on one down- and one up-sampling.
    for h, w in [(2, 3), (9, 4)]:
        direct = F.interpolate(
            x.detach().permute(2, 0, 1)[None], (h, w), mode="bilinear", antialias=True
        )
        np.testing.assert_allclose(
            got[list(map(tuple, shapes)).index((h, w)), : h * w],
            direct[0].permute(1, 2, 0).reshape(h * w, d).numpy(),
            atol=1e-5,
        )


def test_preprocess_equals_transformers_processor(enc):
    rng = np.random.default_rng(0)
    sizes = [(10, 23), (37, 5), (8, 8), (100, 60), (3, 3)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    processor = Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES)
    want = processor(images=images, return_tensors="np", input_data_format="channels_last")
    floats = [x / 127.5 - 1 for x in images]
    resized = enc.preprocess(floats)
    got = naflex.batch_patches(resized, PATCH, MAX_PATCHES)
    np.testing.assert_array_equal(got["spatial_shapes"], want["spatial_shapes"])
    np.testing.assert_array_equal(got["mask"], want["pixel_attention_mask"].astype(bool))
    # PIL resizes uint8 in two rounded passes: at most one grey level (2/255 in [-1, 1]).
    np.testing.assert_allclose(got["patches"], want["pixel_values"], atol=2 / 255 + 1e-5)
    for x, y in zip(floats, resized, strict=True):  # in float: torch's antialiased bilinear
        t = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]
        t = F.interpolate(t, y.shape[:2], mode="bilinear", antialias=True)[0].permute(1, 2, 0)
        np.testing.assert_allclose(y, t.numpy(), atol=1e-5)
    assert resized[2].shape == (16, 16, 3)  # 8x8 fits, but the processor upsizes it
    # embed_images resizes what does not fit (37x5) as preprocess does; 8x8 stays.
    got = enc.embed_images(floats[1:3])
    np.testing.assert_allclose(got[0], enc.embed_images(resized[1:2])[0], atol=1e-6)
    assert not np.allclose(got[1], enc.embed_images(resized[2:3])[0], atol=1e-3)


def test_bad_inputs_name_the_problem(hf_dir, tmp_path, enc):
    with pytest.raises(ValueError, match=r"images\[1\]: expected float \[H, W, 3\]"):
        enc.embed_images([np.zeros((8, 8, 3)), np.zeros((8, 8))])
    with pytest.raises(ValueError, match="max_num_patches: must be >= 1"):
        pretrained.load(str(hf_dir), max_num_patches=0)
    folder = tmp_path / "bad"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["patch_size"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="patch_embedding.weight: shape"):
        pretrained.load(str(folder))


def test_naflex_vit_on_the_full_grid_equals_the_image_path():
    """NaFlex input of the position grid's size, padded with junk patches, = the image
    path for every pooling (``map`` under ``scan``): the resize is then the identity and
    padding is ignored. One compilation for all."""
    image = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    patches = np.stack([naflex.patchify(x, 4) for x in image])
    naflex_input = {
        "patches": np.concatenate([patches, np.full((2, 3, 48), 5.0, np.float32)], axis=1),
        "mask": np.arange(12)[None].repeat(2, 0) < 9,
        "spatial_shapes": np.full((2, 2), 3, np.int32),
    }
    kwargs = {"variant": "mu/4", "num_classes": 8, "naflex_positions": 9}
    vits = {pool: ViT(pool=pool, scan=pool == "map", **kwargs) for pool in ("map", "gap", "tok")}
    rng = np.random.default_rng(1)  # random params without compiling the initialisers
    params = {
        pool: jax.tree.map(
            lambda a: rng.normal(0, 0.3, a.shape).astype(np.float32),
            jax.eval_shape(vit.init, jax.random.key(0), image),
        )
        for pool, vit in vits.items()
    }

    @jax.jit
    def both_paths(params):
        out = {}
        for pool, vit in vits.items():
            loss = functools.partial(lambda v, p, x: jnp.sum(jnp.sin(v.apply(p, x))), vit)
            out[pool] = (loss(params[pool], image), loss(params[pool], naflex_input))
        return out

    for pool, (want, got) in both_paths(params).items():
        close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5, err_msg=pool)
        jax.tree.map(close, got, want)
