"""ViT image tower with OpenAI CLIP's exact layout (conv1 without bias, class token, ln_pre, ln_post, proj),
and SigLIP's through VisionConfig's switches (conv1 bias; no class token, ln_pre or proj; ln_post on every
token, then attention pooling)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import VisionConfig
from clip_jax.models.transformer import (
    LN_EPS,
    AttentionPool,
    LayerNorm,
    Transformer,
    _p,
    dense_on_rows,
    torch_default_bias_init,
    torch_default_init,
)


class VisionTransformer(nn.Module):
    cfg: VisionConfig
    embed_dim: int
    quick_gelu: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan: bool = False
    remat_policy: str = "none"
    attention_impl: str | None = None
    # FLIP: fraction of patch tokens dropped at random during training (class token always kept).
    patch_dropout: float = 0.0
    gelu_approximate: bool = False
    norm_eps: float = LN_EPS

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images: float [B, H, W, 3], already normalised with the OpenAI mean/std. Returns [B, embed_dim]."""
        cfg = self.cfg
        width, p = cfg.width, cfg.patch_size
        scale = width**-0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        act = dict(quick_gelu=self.quick_gelu, gelu_approximate=self.gelu_approximate, norm_eps=self.norm_eps)
        x = PatchEmbed(width, p, bias=cfg.patch_bias, name="conv1", **kw)(images.astype(self.dtype))
        b = x.shape[0]
        prefix = cfg.num_prefix_tokens
        pos = self.param(
            "positional_embedding",
            _p(nn.initializers.normal(scale), (None, "embed")),
            (cfg.grid_size**2 + prefix, width),
            self.param_dtype,
        )
        if x.shape[1] + prefix != pos.shape[0]:
            raise ValueError(
                f"image of {images.shape[1:3]} gives {x.shape[1]} patches but the positional embedding has "
                f"{pos.shape[0] - prefix}; resize images to {cfg.image_size} or use interpolate_pos_embed"
            )
        if cfg.class_token:
            cls = self.param(
                "class_embedding", _p(nn.initializers.normal(scale), ("embed",)), (width,), self.param_dtype
            )
            cls_tok = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, width))
            x = jnp.concatenate([cls_tok, x], axis=1)
        x = x + pos.astype(self.dtype)
        if train and self.patch_dropout > 0:
            x = self._drop_patches(x)
        if not cfg.no_ln_pre:
            x = LayerNorm(name="ln_pre", eps=self.norm_eps, **kw)(x)
        transformer = Transformer(
            cfg.layers,
            cfg.heads,
            cfg.mlp_width,
            scan=self.scan,
            remat_policy=self.remat_policy,
            attention_impl=self.attention_impl,
            init_scheme="torch",  # open_clip's VisionTransformer keeps PyTorch's default init
            name="transformer",
            **act,
            **kw,
        )
        if cfg.pool_type == "tok":
            x = transformer(x, pool_rows=jnp.zeros((b,), jnp.int32))  # the class token
            pooled = LayerNorm(name="ln_post", eps=self.norm_eps, **kw)(x)
        else:
            # MAP (SigLIP, timm's "map" pool): every token is normalised, then a probe attends to them.
            x = LayerNorm(name="ln_post", eps=self.norm_eps, **kw)(transformer(x))
            pooled = AttentionPool(cfg.heads, cfg.mlp_width, name="attn_pool", **act, **kw)(x)
        if not cfg.proj:
            return pooled
        proj = self.param(
            "proj",
            _p(nn.initializers.normal(scale), ("embed", "joint")),
            (width, self.embed_dim),
            self.param_dtype,
        )
        return pooled @ proj.astype(self.dtype)

    def _drop_patches(self, x: jax.Array) -> jax.Array:
        """Keep the class token (if any) and a random subset of patch tokens (a fresh subset per example)."""
        b, n, w = x.shape
        prefix = self.cfg.num_prefix_tokens
        num_patches = n - prefix
        keep = max(1, int(num_patches * (1.0 - self.patch_dropout)))
        noise = jax.random.uniform(self.make_rng("dropout"), (b, num_patches))
        idx = jnp.argsort(noise, axis=1)[:, :keep]
        patches = jnp.take_along_axis(x[:, prefix:], idx[..., None], axis=1)
        return jnp.concatenate([x[:, :prefix], patches], axis=1)


class PatchEmbed(nn.Module):
    """OpenAI's conv1 (kernel = stride = patch, no bias; SigLIP's has one: `bias`) as a matmul on
    flattened patches.

    Same parameter as the convolution (`kernel` [p, p, 3, W]) and the same result; XLA:CPU runs the
    strided convolution ~3x slower than this matmul (benchmarks/RESULTS.md). Like a VALID convolution,
    pixels past the last whole patch are ignored. Returns [B, patches, W] in row-major grid order.
    """

    width: int
    patch_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bias: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        b, h, w, c = images.shape
        kernel = self.param(
            "kernel",
            # nn.Conv2d's default init, as open_clip's conv1 keeps it.
            _p(torch_default_init(in_axis=(0, 1, 2), out_axis=3), (None, None, None, "embed")),
            (p, p, c, self.width),
            self.param_dtype,
        )
        gh, gw = h // p, w // p
        patches = images[:, : gh * p, : gw * p].reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = dense_on_rows(patches.reshape(b, gh * gw, p * p * c), kernel.reshape(p * p * c, self.width))
        if self.bias:
            init = torch_default_bias_init(p * p * c)  # nn.Conv2d's default bias init
            x = x + self.param("bias", _p(init, ("embed",)), (self.width,), self.param_dtype).astype(
                self.dtype
            )
        return x


def interpolate_pos_embed(pos: jax.Array, new_grid: int, prefix_tokens: int = 1) -> jax.Array:
    """Resize a [prefix_tokens + g*g, W] positional embedding to a new grid with bicubic interpolation.

    The class-token row (`prefix_tokens` rows: 0 for SigLIP's tower) is kept as is; used to fine-tune or
    evaluate at a new image size.
    """
    cls, grid = pos[:prefix_tokens], pos[prefix_tokens:]
    old = int(round(grid.shape[0] ** 0.5))
    if old * old != grid.shape[0]:
        raise ValueError(f"positional embedding of {grid.shape[0]} patches is not a square grid")
    if old == new_grid:
        return pos
    grid = grid.reshape(old, old, -1).astype(jnp.float32)
    grid = jax.image.resize(grid, (new_grid, new_grid, grid.shape[-1]), method="cubic")
    return jnp.concatenate([cls, grid.reshape(new_grid * new_grid, -1).astype(pos.dtype)], axis=0)
