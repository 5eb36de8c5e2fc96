"""ViT image tower with OpenAI CLIP's exact layout (conv1 without bias, class token, ln_pre, ln_post, proj)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import VisionConfig
from clip_jax.models.transformer import LayerNorm, Transformer, _p


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

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images: float [B, H, W, 3], already normalised with the OpenAI mean/std. Returns [B, embed_dim]."""
        cfg = self.cfg
        width, p = cfg.width, cfg.patch_size
        scale = width**-0.5
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Conv(
            width,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            kernel_init=_p(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            name="conv1",
            **kw,
        )(images.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, width)
        cls = self.param(
            "class_embedding", _p(nn.initializers.normal(scale), ("embed",)), (width,), self.param_dtype
        )
        pos = self.param(
            "positional_embedding",
            _p(nn.initializers.normal(scale), (None, "embed")),
            (cfg.grid_size**2 + 1, width),
            self.param_dtype,
        )
        if x.shape[1] + 1 != pos.shape[0]:
            raise ValueError(
                f"image of {images.shape[1:3]} gives {x.shape[1]} patches but the positional embedding has "
                f"{pos.shape[0] - 1}; resize images to {cfg.image_size} or use interpolate_pos_embed"
            )
        cls_tok = jnp.broadcast_to(cls.astype(self.dtype), (b, 1, width))
        x = jnp.concatenate([cls_tok, x], axis=1) + pos.astype(self.dtype)
        if train and self.patch_dropout > 0:
            x = self._drop_patches(x)
        x = LayerNorm(name="ln_pre", **kw)(x)
        x = Transformer(
            cfg.layers,
            cfg.heads,
            cfg.mlp_width,
            quick_gelu=self.quick_gelu,
            scan=self.scan,
            remat_policy=self.remat_policy,
            attention_impl=self.attention_impl,
            name="transformer",
            **kw,
        )(x)
        pooled = LayerNorm(name="ln_post", **kw)(x[:, 0])
        proj = self.param(
            "proj",
            _p(nn.initializers.normal(scale), ("embed", "joint")),
            (width, self.embed_dim),
            self.param_dtype,
        )
        return pooled @ proj.astype(self.dtype)

    def _drop_patches(self, x: jax.Array) -> jax.Array:
        """Keep the class token and a random subset of patch tokens (a fresh subset per example)."""
        b, n, w = x.shape
        num_patches = n - 1
        keep = max(1, int(num_patches * (1.0 - self.patch_dropout)))
        noise = jax.random.uniform(self.make_rng("dropout"), (b, num_patches))
        idx = jnp.argsort(noise, axis=1)[:, :keep]
        patches = jnp.take_along_axis(x[:, 1:], idx[..., None], axis=1)
        return jnp.concatenate([x[:, :1], patches], axis=1)


def interpolate_pos_embed(pos: jax.Array, new_grid: int) -> jax.Array:
    """Resize a [1 + g*g, W] positional embedding to a new grid with bicubic interpolation.

    The class-token row is kept as is; used to fine-tune or evaluate at a new image size.
    """
    cls, grid = pos[:1], pos[1:]
    old = int(round(grid.shape[0] ** 0.5))
    if old * old != grid.shape[0]:
        raise ValueError(f"positional embedding of {grid.shape[0]} patches is not a square grid")
    if old == new_grid:
        return pos
    grid = grid.reshape(old, old, -1).astype(jnp.float32)
    grid = jax.image.resize(grid, (new_grid, new_grid, grid.shape[-1]), method="cubic")
    return jnp.concatenate([cls, grid.reshape(new_grid * new_grid, -1).astype(pos.dtype)], axis=0)
