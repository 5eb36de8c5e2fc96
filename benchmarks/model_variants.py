"""Variants of our model, made by patching clip_jax.models' classes inside the benchmark process.

A variant changes only our side of a comparison, so that what a model change would buy is measured
before it is made in clip_jax/models: `bench_models.py --variants` and the XLA:CPU sweep (`cpu_sweep.py`)
build our model through a `Variant`; the GPU benchmark's `--ln custom_vjp` installs
`LayerNormCustomVJP` for its whole process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.common import ATOL
from clip_jax.models import CLIP, CLIPConfig, stack_layers
from clip_jax.models import text as text_mod
from clip_jax.models import transformer as transformer_mod
from clip_jax.models import vit as vit_mod


class EinsumAttention(transformer_mod.Attention):
    """Attention as two einsums and a softmax on the [B, L, H, D] layout (the model's default makes
    heads-major copies first). With `query_rows` (the model's last block), every row is attended and the
    pooled rows kept."""

    @nn.compact
    def __call__(self, x: jax.Array, query_rows: jax.Array | None = None) -> jax.Array:
        q, k, v = transformer_mod.QKVProjection(
            self.heads, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv"
        )(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k)
        if self.causal:
            n = x.shape[1]
            logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        if query_rows is not None:
            out = transformer_mod.take_rows(out, query_rows)
        return transformer_mod.AttentionOut(dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)


class PackedQKV(transformer_mod.QKVProjection):
    """q, k, v from one [B*L, W] x [W, 3*H*D] matmul and a split (the model uses three matmuls)."""

    def product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return transformer_mod.dense_on_rows(x, kernel)

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        width = x.shape[-1]
        shape = (width, 3, self.heads, width // self.heads)
        kernel = self.param("kernel", nn.initializers.zeros, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape[1:], self.param_dtype)
        qkv = self.product(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


class Projections3D:
    """The model's layout before it moved to row matmuls (dense_on_rows): every projection as an
    einsum or nn.Dense on [B, L, ...] activations, q/k/v from one packed einsum."""

    class QKV(PackedQKV):
        def product(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
            return jnp.einsum("bld,dthk->blthk", x, kernel)

    class Out(transformer_mod.AttentionOut):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            heads, head_dim = x.shape[-2:]
            width = heads * head_dim
            kernel = self.param("kernel", nn.initializers.zeros, (heads, head_dim, width), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (width,), self.param_dtype)
            return jnp.einsum("blhk,hkd->bld", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)

    class MLP(transformer_mod.MLP):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            h = nn.Dense(self.mlp_width, name="c_fc", **kw)(x)
            h = transformer_mod.activation_fn(self.quick_gelu)(h)
            return nn.Dense(x.shape[-1], name="c_proj", **kw)(h)


class ConvPatchEmbed(vit_mod.PatchEmbed):
    """The patch embedding as the strided convolution that PatchEmbed replaced (same [p, p, 3, W] kernel)."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.patch_size
        shape = (p, p, images.shape[-1], self.width)
        kernel = self.param("kernel", nn.initializers.zeros, shape, self.param_dtype)
        x = jax.lax.conv_general_dilated(
            images, kernel.astype(self.dtype), (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return x.reshape(x.shape[0], -1, self.width)


class FullLastBlock(transformer_mod.ResidualAttentionBlock):
    """The last block computed on every row and the pooled row picked afterwards (the model computes
    only the pooled row past the keys and values)."""

    def __call__(self, x: jax.Array, _: Any = None, out_rows: jax.Array | None = None) -> tuple:
        y, hidden = super().__call__(x, _)
        return (y if out_rows is None else transformer_mod.take_rows(y, out_rows)), hidden


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    """`obj.attr = value` while the context lasts (the model modules look their classes up when traced)."""
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How our side is built: CLIP keyword arguments, class patches active while tracing, tolerance."""

    name: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
    scan: bool = False
    atol: float = ATOL
    # Unit roundoff of the activations' dtype when it is below float32 (bf16: 2^-8); the tolerance is then
    # derived from it (`tolerance`) instead of `atol`.
    rounding_unit: float | None = None

    def tolerance(self, cfg: CLIPConfig, part: str, scale: float) -> float:
        """Allowed max |ours - open_clip| of `part` ("image", "text" tower or "train" loss) whose reference
        values are of magnitude `scale` (their max |.|).

        In float32 it is `atol` (the frameworks sum in different orders). In a low-precision dtype each
        block rounds its activations about 10 times (LayerNorm, q/k/v, scores, softmax, output, MLP twice,
        residual adds), so along the deepest path n = 10 * layers + 10 roundings of relative size u add up
        as a random walk to sqrt(n) * u of the output's scale; 4 times that allows for the walk's tails
        and for rounding being amplified by the last LayerNorm. ViT-B-32's text tower (12 layers, bf16):
        4 * sqrt(130) * 2^-8 = 18% of the largest feature.
        """
        if self.rounding_unit is None:
            return self.atol
        layers = {"image": cfg.vision.layers, "text": cfg.text.layers}.get(
            part, max(cfg.vision.layers, cfg.text.layers)
        )
        return 4 * math.sqrt(10 * layers + 10) * self.rounding_unit * scale

    def model(self, cfg: CLIPConfig) -> CLIP:
        return CLIP(cfg, scan=self.scan, **dict(self.model_kwargs))

    def params(self, params: dict) -> dict:
        return stack_layers(params) if self.scan else params

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for make in self.patches:
                stack.enter_context(make())
            yield


_3D = (
    lambda: _patched(transformer_mod, "QKVProjection", Projections3D.QKV),
    lambda: _patched(transformer_mod, "AttentionOut", Projections3D.Out),
    lambda: _patched(transformer_mod, "MLP", Projections3D.MLP),
)
_CONV = (lambda: _patched(vit_mod, "PatchEmbed", ConvPatchEmbed),)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("default"),
        # The layout the model had before this investigation: 3-D projections and a strided conv.
        Variant("before_rows", patches=(*_3D, *_CONV)),
        Variant("proj_3d", patches=_3D),
        Variant("conv_patch", patches=_CONV),
        Variant(
            "full_last_block",
            patches=(lambda: _patched(transformer_mod, "ResidualAttentionBlock", FullLastBlock),),
        ),
        Variant("packed_qkv", patches=(lambda: _patched(transformer_mod, "QKVProjection", PackedQKV),)),
        Variant("attn_xla", (("attention_impl", "xla"),)),
        Variant("attn_einsum", patches=(lambda: _patched(transformer_mod, "Attention", EinsumAttention),)),
        Variant("scan", scan=True),
        Variant("bf16", (("dtype", jnp.bfloat16),), rounding_unit=2**-8),
    )
}


# --------------------------------------------------------------------------------------------------
# EXPERIMENT (GPU benchmark, `--ln custom_vjp`): LayerNorm with a hand-written backward pass
# --------------------------------------------------------------------------------------------------


@jax.custom_vjp
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    return _layer_norm_fwd(x, scale, bias)[0]


def _layer_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, tuple]:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + transformer_mod.LN_EPS)
    y = centred * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(res: tuple, dy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, mean, rstd, scale, bias = res
    dy = dy.astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    axes = tuple(range(dy.ndim - 1))
    g = dy * scale.astype(jnp.float32)
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    dscale = jnp.sum(dy * xhat, axis=axes).astype(scale.dtype)
    dbias = jnp.sum(dy, axis=axes).astype(bias.dtype)
    return dx.astype(x.dtype), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNormCustomVJP(transformer_mod.LayerNorm):
    """EXPERIMENT, not the project's code path: LayerNorm with a hand-written backward pass.

    The profile of the project's step showed LayerNorm's backward (autodiff through the two-pass fp32
    mean/variance) as the largest non-matmul cost. This keeps the forward bit-identical and saves only
    the input, mean and 1/std; the backward is the closed form
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * scale,
    with dscale = sum(dy * xhat), dbias = sum(dy). The module's name and parameters are unchanged.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        p = transformer_mod._p
        scale = self.param("scale", p(nn.initializers.ones, ("embed",)), (width,), self.param_dtype)
        bias = self.param("bias", p(nn.initializers.zeros, ("embed",)), (width,), self.param_dtype)
        return _layer_norm(x, scale, bias).astype(self.dtype)


def install_custom_vjp_layernorm() -> None:
    """Make every tower build LayerNormCustomVJP for the rest of this process (one config a process)."""
    for module in (transformer_mod, vit_mod, text_mod):
        module.LayerNorm = LayerNormCustomVJP
