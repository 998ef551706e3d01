"""SimCLR's NT-Xent between two augmented views of one modality: the intra-modal term of
SLIP (Mu et al., ECCV 2022, "SLIP: Self-supervision meets Language-Image
Pre-training", arXiv 2112.12750), ``L_SLIP = L_CLIP + c * L_SimCLR`` (c = 1; mix it with
a cross-modal objective: ``loss.name = "mix"``, configs/slip.py).

For views ``u, v: [B, d]`` (row i of u and of v are two augmentations of one example),
``h = g(.)`` the projection head and ``z`` the 2B unit rows of ``[h(u); h(v)]``:

    l_ij = z_i . z_j / tau
    L = 1/(2B) sum_i [ log sum_{k != i} exp(l_ik) - l_{i, p(i)} ]     (NT-Xent, Chen et al. 2020)

with ``p(i)`` the other view of example i. The head ``g(x) = W2 relu(W1 x + b1) + b2``
is SimCLR's (v1) MLP; SLIP uses a separate 3-layer MLP on the image encoder's features,
ours sits on the image tower's embedding (the shared projection), so that the tower
stays one module; ``mlp_dim = 0`` uses the embeddings directly. Logits are
max-subtracted (``logsumexp``), so ``tau = 1e-3`` (|logits| ~ 1e3) stays finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from multimodal_ssl.losses.common import acc_dtype
from multimodal_ssl.losses.objectives import Objective, parse_pairs, register_objective

HEAD = "simclr_head"  # the head's top-level param subtree
_NORM_FLOOR = 1e-12  # squared-norm floor of the row normalisation


def mlp_head(params: dict, x: jax.Array) -> jax.Array:
    """``x: [B, d] -> [B, out]``: ``relu(x @ hidden.kernel + hidden.bias) @ out.kernel +
    out.bias`` (params as :func:`init_mlp_head` makes them)."""
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def init_mlp_head(rng: jax.Array, dim: int, mlp_dim: int, out_dim: int) -> dict:
    """Lecun-normal kernels (flax ``Dense``'s default), zero biases; f32."""
    k1, k2 = jax.random.split(rng)
    init = jax.nn.initializers.lecun_normal()
    return {
        "hidden": {"kernel": init(k1, (dim, mlp_dim)), "bias": jnp.zeros(mlp_dim)},
        "out": {"kernel": init(k2, (mlp_dim, out_dim)), "bias": jnp.zeros(out_dim)},
    }


def nt_xent_loss(u: jax.Array, v: jax.Array, temperature: float) -> jax.Array:
    """NT-Xent of the module docstring on ``u, v: [B, d]`` (rows L2-normalised here,
    zero rows stay zero) -> scalar in >= f32."""
    z = jnp.concatenate([u, v]).astype(acc_dtype(u))
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=1, keepdims=True), _NORM_FLOOR))
    n = u.shape[0]
    logits = (z @ z.T) / temperature
    idx = jnp.arange(2 * n)
    self_mask = idx[:, None] == idx[None, :]
    partner = (idx + n) % (2 * n)
    positives = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    lse = jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=1)
    return jnp.mean(lse - positives)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config.loss.{key}: {message}")


@register_objective
class SimCLR(Objective):
    """NT-Xent between two views through an MLP head (module docstring).

    Keys: ``views`` (``"image-image_view2"``: a modality and its second view, an input
    of ``data.views``), ``temperature`` (fixed, SLIP: 0.1), ``mlp_dim`` (hidden width;
    0 = no head), ``out_dim``, ``init_seed`` (the head's init, independent of
    ``config.seed``). Params: ``simclr_head`` (``hidden``/``out`` kernel and bias).
    Metrics: ``train/loss/<a>_<b>``.
    """

    NAME = "simclr"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        cfg = super().default_config()
        cfg.views = "image-image_view2"
        cfg.temperature = 0.1
        cfg.mlp_dim = 512
        cfg.out_dim = 128
        cfg.init_seed = 0
        return cfg

    @classmethod
    def resolve(cls, cfg, modalities):
        out = super().resolve(cfg, modalities)
        try:
            views = parse_pairs(out["views"], modalities)
        except ValueError as e:
            raise ValueError(str(e).replace("config.loss.pairs", "config.loss.views")) from None
        if len(views) != 1:
            _fail("views", f"SimCLR contrasts one pair of views, got {views}")
        out["views"] = views[0]
        if not isinstance(out["temperature"], int | float) or out["temperature"] <= 0:
            _fail("temperature", f"must be > 0, got {out['temperature']!r}")
        for key, low in (("mlp_dim", 0), ("out_dim", 1), ("init_seed", 0)):
            if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < low:
                _fail(key, f"must be an int >= {low}, got {out[key]!r}")
        return out

    def __init__(self, cfg, modalities, optional=(), **kw):
        super().__init__(cfg, modalities, optional, **kw)
        if self.optional & set(self.config["views"]):
            _fail(
                "views",
                f"SimCLR needs both views in every example; some training sources lack "
                f"{sorted(self.optional & set(self.config['views']))}",
            )

    def init_params(self) -> dict[str, jax.Array]:
        if not self.config["mlp_dim"]:
            return {}
        if self.embed_dim is None:
            raise ValueError(
                "simclr: the head needs the embedding width; build it with "
                "make_objective(..., embed_dim=config.model.embed_dim)"
            )
        rng = jax.random.key(self.config["init_seed"])
        cfg = self.config
        return {HEAD: init_mlp_head(rng, self.embed_dim, cfg["mlp_dim"], cfg["out_dim"])}

    def __call__(self, embeddings, params, *, masks=None, mesh=None, rng=None):
        a, b = self.config["views"]
        u, v = embeddings[a], embeddings[b]
        if self.config["mlp_dim"]:
            u, v = mlp_head(params[HEAD], u), mlp_head(params[HEAD], v)
        loss = nt_xent_loss(u, v, self.config["temperature"])
        return loss, {f"train/loss/{a}_{b}": loss}
