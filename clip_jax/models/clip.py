"""The two-tower CLIP model: image and text encoders plus a learned temperature (and optional bias)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models.config import CLIPConfig
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.models.text import TextTransformer
from clip_jax.models.vit import VisionTransformer


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / ||x||, the normalisation CLIP applies to features before the dot product (in float32)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class CLIP(nn.Module):
    """CLIP(cfg).apply({'params': p}, images, tokens) -> (image_features, text_features, logit_scale[, bias]).

    SigLIP is this model too (its config's switches; a logit bias): its logits are
    logit_scale * img @ txt.T + bias, and its probabilities their sigmoid (`label_probabilities`).

    `encode_image` and `encode_text` return *unnormalised* features (as open_clip's do with
    normalize=False); `__call__` returns L2-normalised features and exp(logit_scale).
    """

    cfg: CLIPConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan: bool = False
    remat_policy: str = "none"
    attention_impl: str | None = None
    patch_dropout: float = 0.0

    def setup(self) -> None:
        kw = dict(
            embed_dim=self.cfg.embed_dim,
            quick_gelu=self.cfg.quick_gelu,
            gelu_approximate=self.cfg.gelu_approximate,
            norm_eps=self.cfg.norm_eps,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scan=self.scan,
            remat_policy=self.remat_policy,
            attention_impl=self.attention_impl,
        )
        # Each tower computes the GELU form its weights were trained with (they may differ: `open_clip_gelu`).
        vision_act, text_act = self.cfg.vision_gelu_approximate, self.cfg.text_gelu_approximate
        self.visual = image_tower(
            self.cfg, patch_dropout=self.patch_dropout, **{**kw, "gelu_approximate": vision_act}
        )
        self.text = TextTransformer(self.cfg.text, **{**kw, "gelu_approximate": text_act})
        self.logit_scale = self.param("logit_scale", _scalar_init(self.cfg.init_logit_scale), (), jnp.float32)
        if self.cfg.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", _scalar_init(self.cfg.init_logit_bias), (), jnp.float32
            )

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.visual(images, train=train)

    def encode_text(self, tokens: jax.Array, hidden_layer: int | None = None) -> jax.Array:
        return self.text(tokens, hidden_layer=hidden_layer)

    def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        img = l2_normalize(self.encode_image(images, train=train))
        txt = l2_normalize(self.encode_text(tokens))
        out = (img, txt, jnp.exp(self.logit_scale))
        if self.cfg.init_logit_bias is not None:
            out = out + (self.logit_bias,)
        return out


def label_probabilities(
    img: jax.Array, txt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array | None = None
) -> jax.Array:
    """Per image (unit features img [N, D] against unit txt [T, D]), the probability of each text.

    CLIP (no logit bias) was trained with a softmax over the batch's texts: softmax over the T texts of
    logit_scale * cos. SigLIP (a logit bias) was trained with an independent sigmoid per pair:
    sigmoid(logit_scale * cos + bias), which need not sum to 1 over texts. Both rank texts the same.
    """
    logits = logit_scale * img @ txt.T
    if logit_bias is None:
        return jax.nn.softmax(logits, axis=-1)
    return jax.nn.sigmoid(logits + logit_bias)


def image_tower(cfg: CLIPConfig, **kw: Any) -> nn.Module:
    """The image tower `cfg.vision` describes, a ViT or a ModifiedResNet: both map images [B, H, W, 3] to
    features [B, embed_dim] with `__call__(images, train=False)`.

    `kw` are the CLIP model's settings; those that a ResNet has no use for (the activation, attention
    kernel, scan over layers, patch dropout: it has no transformer layers or patches) are dropped for it.
    """
    if not cfg.vision.resnet:
        return VisionTransformer(cfg.vision, **kw)
    if kw.get("patch_dropout"):
        raise ValueError("patch_dropout needs a ViT image tower; a ResNet has no patches")
    kw = {k: v for k, v in kw.items() if k in ("embed_dim", "dtype", "param_dtype", "remat_policy")}
    return ModifiedResNet(cfg.vision, **kw)


def _scalar_init(value: float):
    return nn.with_logical_partitioning(lambda key, shape, dtype: jnp.full(shape, value, dtype), ())


@functools.partial(jax.jit, static_argnums=0)
def init_params(model: CLIP, rng: jax.Array) -> dict:
    """Initialise parameters (unboxed plain arrays) with dummy inputs of the model's sizes.

    Jitted, with the model as a static argument: run op by op, Flax's init dispatches hundreds of small
    random-number programs (22 s for the tiny test model on 2 CPU cores; 10 s compiled), and equal models
    share one compiled executable.
    """
    cfg = model.cfg
    images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    return nn.unbox(model.init(rng, images, tokens)["params"])


def random_params(model: CLIP, seed: int = 0, std: float = 0.02) -> dict:
    """Random params for smoke tests, drawn with numpy in the shapes of `init_params`.

    Not CLIP's initialisation (LayerNorm and BatchNorm scales are 1, biases 0, BatchNorm running means 0
    and variances 1, everything else N(0, std^2)), but built without compiling the model's init, which
    takes a minute on a small CPU even for the tiny model.
    """
    import numpy as np

    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith(("['scale']", "['running_var']")):
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("['running_mean']"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith("['bias']"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith("['logit_scale']"):
            return np.full(leaf.shape, model.cfg.init_logit_scale, leaf.dtype)
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=8)
def param_shapes(cfg: CLIPConfig, param_dtype: Any = np.float32) -> dict:
    """Per-layer params tree of ShapeDtypeStructs for `cfg` (nothing is allocated; cached, as tracing
    a large model's init takes seconds). Treat the result as read-only."""
    model = CLIP(cfg, param_dtype=param_dtype)
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
