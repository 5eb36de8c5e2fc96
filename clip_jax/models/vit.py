"""ViT image tower with OpenAI CLIP's exact layout (conv1 without bias, class token, ln_pre, ln_post, proj)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import VisionConfig
from clip_jax.models.transformer import LayerNorm, Transformer, _p, dense_on_rows, torch_default_init


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
        x = PatchEmbed(width, p, name="conv1", **kw)(images.astype(self.dtype))
        b = x.shape[0]
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
            init_scheme="torch",  # open_clip's VisionTransformer keeps PyTorch's default init
            name="transformer",
            **kw,
        )(x, pool_rows=jnp.zeros((b,), jnp.int32))  # the class token
        pooled = LayerNorm(name="ln_post", **kw)(x)
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


class PatchEmbed(nn.Module):
    """OpenAI's conv1 (kernel = stride = patch, no bias) as a matmul on flattened patches.

    Same parameter as the convolution (`kernel` [p, p, 3, W]) and the same result; XLA:CPU runs the
    strided convolution ~3x slower than this matmul (benchmarks/RESULTS.md). Like a VALID convolution,
    pixels past the last whole patch are ignored. Returns [B, patches, W] in row-major grid order.
    """

    width: int
    patch_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

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
        return dense_on_rows(patches.reshape(b, gh * gw, p * p * c), kernel.reshape(p * p * c, self.width))


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
