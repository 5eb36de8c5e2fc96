"""Pre-LayerNorm transformer shared by both towers, laid out like OpenAI's `ResidualAttentionBlock`.

Parameter layout (per block; a leading `layers` axis is added when layers are scanned):
  ln_1, ln_2:     LayerNorm scale/bias [W]
  attn/qkv:       kernel [W, 3, H, D], bias [3, H, D]   (OpenAI's in_proj_weight [3W, W] reshaped)
  attn/out:       kernel [H, D, W],    bias [W]
  mlp/c_fc:       kernel [W, M],       bias [M]
  mlp/c_proj:     kernel [M, W],       bias [W]
Every parameter carries logical axis names; `clip_jax.sharding` maps them onto mesh axes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# OpenAI/open_clip LayerNorm epsilon (Flax's default is 1e-6).
LN_EPS = 1e-5

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    """The activation OpenAI's CLIP weights were trained with."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU() (erf form), used by open_clip's own models; JAX's default is the tanh form.

    Written with erf, as torch computes it, rather than jax.nn.gelu(approximate=False), which uses erfc:
    same values (within 1.2e-6 of torch over [-12, 12]) and ~3x cheaper on XLA:CPU, where erfc branches.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5)))


def tanh_gelu(x: jax.Array) -> jax.Array:
    """GELU's tanh approximation, torch's gelu(approximate="tanh") (HF's "gelu_pytorch_tanh"): SigLIP's."""
    return jax.nn.gelu(x, approximate=True)


def activation_fn(quick: bool, approximate: bool = False) -> Callable[[jax.Array], jax.Array]:
    """QuickGELU, tanh GELU (`approximate`) or exact GELU, as a model config's two switches choose."""
    if quick and approximate:
        raise ValueError("quick_gelu and gelu_approximate are exclusive")
    return quick_gelu if quick else tanh_gelu if approximate else exact_gelu


def _p(init: Callable, names: tuple[str | None, ...]) -> Callable:
    return nn.with_logical_partitioning(init, names)


def torch_default_init(in_axis=-2, out_axis=-1) -> Callable:
    """nn.Linear / nn.Conv2d's default weight (and bias) init, kaiming_uniform(a=sqrt(5)):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis)


def torch_default_bias_init(fan_in: int) -> Callable:
    """nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# How a tower's blocks are initialised, as open_clip initialises them. "text": TextTransformer's
# init_parameters (OpenAI's): normal in_proj (std W^-0.5), c_fc ((2W)^-0.5), and out_proj / c_proj at
# W^-0.5 (2 * layers)^-0.5, so the residual stream's variance stays put with depth; MLP biases keep
# nn.Linear's default. "torch": PyTorch's defaults, which open_clip's VisionTransformer keeps (its
# init_parameters is empty): xavier_uniform in_proj, kaiming_uniform(a=sqrt(5)) out_proj, c_fc and c_proj
# weights and MLP biases. Attention biases are zero in both (nn.MultiheadAttention._reset_parameters).
INIT_SCHEMES = ("text", "torch")


def block_initializers(scheme: str, width: int, mlp_width: int, layers: int) -> dict[str, Callable]:
    """Kernel and bias initializers of one residual block's projections for `scheme`."""
    if scheme == "text":
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        return {
            "qkv": nn.initializers.normal(width**-0.5),
            "out": nn.initializers.normal(proj_std),
            "c_fc": nn.initializers.normal((2 * width) ** -0.5),
            "c_fc_bias": torch_default_bias_init(width),
            "c_proj": nn.initializers.normal(proj_std),
            "c_proj_bias": torch_default_bias_init(mlp_width),
        }
    if scheme == "torch":
        return {
            # in_proj_weight [3W, W]: fan_in W, fan_out 3W; here [W, 3, H, D].
            "qkv": nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
            "out": torch_default_init(in_axis=(0, 1), out_axis=2),
            "c_fc": torch_default_init(),
            "c_fc_bias": torch_default_bias_init(width),
            "c_proj": torch_default_init(),
            "c_proj_bias": torch_default_bias_init(mlp_width),
        }
    raise ValueError(f"unknown init scheme {scheme!r}; choose from {INIT_SCHEMES}")


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """x [B, L, ...], rows [B] (int) -> x[b, rows[b]] for every b, keeping the length axis: [B, 1, ...]."""
    index = rows.astype(jnp.int32).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(x, index, axis=1)


def dense_on_rows(x: jax.Array, kernel: jax.Array, in_dims: int = 1) -> jax.Array:
    """Contract the last `in_dims` axes of x [..., *in] with kernel [*in, *out] as one 2-D row matmul.

    Why rows: for a [B, L, W] operand, XLA:CPU computes the weight gradient by first transposing the
    activations' cotangent into a fresh buffer, and fuses the whole residual-stream gradient chain into
    that copy, once per layer (quadratic in depth). On [B*L, W] rows the library GEMM reads the operand
    as it is: the ViT-B/32 train step went from 0.68x to 0.80x open_clip's speed (bench_models variant
    `before_rows`, benchmarks/RESULTS.md). The reshapes are free on every backend.
    """
    lead, out = x.shape[: x.ndim - in_dims], kernel.shape[in_dims:]
    k = math.prod(kernel.shape[:in_dims])
    y = x.reshape(-1, k) @ kernel.reshape(k, -1)
    return y.reshape((*lead, *out))


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm(eps=1e-5, or `eps`): two-pass variance in float32, then cast to the compute dtype."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    eps: float = LN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", _p(nn.initializers.ones, ("embed",)), (width,), self.param_dtype)
        bias = self.param("bias", _p(nn.initializers.zeros, ("embed",)), (width,), self.param_dtype)
        x = x.astype(jnp.float32)
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class Attention(nn.Module):
    heads: int
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # None: heads_major_attention (XLA); "xla": jax.nn.dot_product_attention's XLA path; "cudnn": its
    # fused flash kernel on NVIDIA GPUs.
    attention_impl: str | None = None
    qkv_init: Callable = nn.initializers.normal(0.02)
    out_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(
        self, x: jax.Array, query_rows: jax.Array | None = None, context: jax.Array | None = None
    ) -> jax.Array:
        """x [B, L, W] -> [B, L, W]; with `query_rows` [B] (int), only those query rows: [B, 1, W].

        With `context` [B, N, W], x's rows query the keys and values of context's (cross-attention, as
        SigLIP's attention-pooling probe does), without mask: [B, L, W].
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = QKVProjection(self.heads, kernel_init=self.qkv_init, name="qkv", **kw)
        q, k, v = qkv(x) if context is None else qkv(x, context)
        q, k, v = (
            nn.with_logical_constraint(a, ("act_batch", "act_len", "act_heads", None)) for a in (q, k, v)
        )
        if context is not None:
            if self.causal or query_rows is not None:
                raise ValueError("cross-attention (context) takes neither a causal mask nor query_rows")
            # A few queries (the pooling probe) against every token: a negligible share of the work, so
            # XLA's path whatever the setting (cuDNN's kernel wants equal lengths).
            out = jax.nn.dot_product_attention(q, k, v)
        elif query_rows is None:
            out = attention(q, k, v, causal=self.causal, implementation=self.attention_impl)
        else:
            # One query per sequence attends to every key (or, causally, to keys up to its position).
            # Such a call is a negligible share of the work, so it takes XLA's path whatever the setting.
            lengths = query_rows.astype(jnp.int32) + 1 if self.causal else None
            out = jax.nn.dot_product_attention(take_rows(q, query_rows), k, v, key_value_seq_lengths=lengths)
        out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))
        return AttentionOut(kernel_init=self.out_init, name="out", **kw)(out)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, implementation: str | None
) -> jax.Array:
    """Scaled dot-product attention over [B, L, H, D].

    implementation: None for `heads_major_attention` (XLA), "xla" for jax.nn.dot_product_attention's
    XLA path, "cudnn" for its fused cuDNN kernel. cuDNN's kernel rejects odd sequence lengths in
    training (ViT-B/16 has 197 tokens, the text tower 77), so for it the sequence is padded to a multiple
    of 8 and the padding masked out through the kernel's sequence-length arguments; the result equals
    unpadded attention.
    """
    if implementation is None:
        return heads_major_attention(q, k, v, causal=causal)
    if implementation not in ("xla", "cudnn"):
        raise ValueError(f"attention_impl must be None, 'xla' or 'cudnn'; got {implementation!r}")
    if implementation == "cudnn" and q.shape[1] % 8:
        return padded_attention(q, k, v, causal=causal, implementation=implementation)
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)


def heads_major_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool) -> jax.Array:
    """[B, L, H, D] attention computed on [B, H, L, D] copies: the same arithmetic as
    jax.nn.dot_product_attention's XLA path (fp32 logits scaled after the product, fp32 softmax).

    Why the transposes: on XLA:CPU the probabilities-times-values product of the [B, L, H, D] form runs
    at about a quarter of the GEMM rate; heads-major operands make both products plain batched GEMMs.
    ViT-B/16 image tower, batch 16: ~1.2x faster in all (benchmarks/README.md, variant `attn_xla`).
    """
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    return jnp.swapaxes(_heads_major_core(q, k, v, causal), 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _heads_major_core(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    return _heads_major_fwd(q, k, v, causal)[0]


def _attention_probs(q: jax.Array, k: jax.Array, causal: bool) -> jax.Array:
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * q.shape[-1] ** -0.5
    if causal:
        n = q.shape[2]
        # The masked value jax.nn.dot_product_attention uses: finite, so a fully masked row cannot NaN.
        logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -0.7 * jnp.finfo(jnp.float32).max)
    return jax.nn.softmax(logits, axis=-1)


def _heads_major_fwd(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> tuple[jax.Array, tuple]:
    probs = _attention_probs(q, k, causal)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v), (q, k, v, probs)


def _heads_major_bwd(causal: bool, residuals: tuple, d_out: jax.Array) -> tuple[jax.Array, ...]:
    """The textbook attention backward from the saved fp32 probabilities P: dV = P^T dO,
    dS = P * (dP - rowsum(dP * P)) with dP = dO V^T, then dQ = dS K and dK = dS^T Q, both scaled.

    Autodiff of the forward gives the same gradients to float rounding, but on XLA:CPU it differentiates
    the softmax through its unnormalised exponentials and materialises two score-sized broadcasts;
    this form makes the whole train step 1.05x faster for ViT-B/16 (batch 8) and 1.03x for ViT-B/32
    (batch 32), same process (benchmarks/README.md). Masked entries have P = 0: no gradient.
    """
    del causal  # already in P
    q, k, v, probs = residuals
    d_v = jnp.einsum("bhqk,bhqd->bhkd", probs.astype(v.dtype), d_out)
    d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, v, preferred_element_type=jnp.float32)
    # In the inputs' dtype for the two products, as the probabilities are for P V (bf16 GEMMs in bf16).
    d_logits = (probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))).astype(q.dtype)
    scale = q.shape[-1] ** -0.5
    d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits, k, preferred_element_type=jnp.float32) * scale
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_logits, q, preferred_element_type=jnp.float32) * scale
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_heads_major_core.defvjp(_heads_major_fwd, _heads_major_bwd)


def padded_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, implementation: str | None, multiple: int = 8
) -> jax.Array:
    """Attention with the sequence padded to `multiple` and the padding masked by sequence lengths."""
    length = q.shape[1]
    widths = ((0, 0), (0, -length % multiple), (0, 0), (0, 0))
    q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
    lengths = jnp.full((q.shape[0],), length, jnp.int32)
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        is_causal=causal,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :length]


class QKVProjection(nn.Module):
    """W -> q, k, v, each [..., H, D], from OpenAI's packed in_proj kept as one [W, 3, H, D] parameter.

    Computed as three row matmuls, one per slice of the packed kernel, rather than one matmul and a
    split: each slice flattens to [W, H*D] with the (tensor-sharded) heads axis outermost, so the
    projection stays sharded by heads, and no [.., 3, H, D] tensor is split or re-stacked.
    """

    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q from x, k and v from `context` (default: x itself)."""
        width = x.shape[-1]
        head_dim = width // self.heads
        kernel = self.param(
            "kernel",
            _p(self.kernel_init, ("embed", None, "heads", "kv")),
            (width, 3, self.heads, head_dim),
            self.param_dtype,
        )
        bias = self.param(
            "bias",
            _p(nn.initializers.zeros, (None, "heads", "kv")),
            (3, self.heads, head_dim),
            self.param_dtype,
        )
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        sources = (x, x, x) if context is None else (x, context, context)
        q, k, v = (dense_on_rows(a, kernel[:, i]) + bias[i] for i, a in enumerate(sources))
        return q, k, v


class AttentionOut(nn.Module):
    """Output projection [H, D] -> W of the attention heads."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        heads, head_dim = x.shape[-2:]
        width = heads * head_dim
        kernel = self.param(
            "kernel",
            _p(self.kernel_init, ("heads", "kv", "embed")),
            (heads, head_dim, width),
            self.param_dtype,
        )
        bias = self.param("bias", _p(nn.initializers.zeros, ("embed",)), (width,), self.param_dtype)
        return dense_on_rows(x, kernel.astype(self.dtype), in_dims=2) + bias.astype(self.dtype)


class MLP(nn.Module):
    mlp_width: int
    quick_gelu: bool = False
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    inits: dict[str, Callable] | None = None  # c_fc, c_fc_bias, c_proj, c_proj_bias (block_initializers)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        inits = self.inits or block_initializers("text", width, self.mlp_width, 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c_fc = nn.Dense(
            self.mlp_width,
            kernel_init=_p(inits["c_fc"], ("embed", "mlp")),
            bias_init=_p(inits["c_fc_bias"], ("mlp",)),
            name="c_fc",
            **kw,
        )
        c_proj = nn.Dense(
            width,
            kernel_init=_p(inits["c_proj"], ("mlp", "embed")),
            bias_init=_p(inits["c_proj_bias"], ("embed",)),
            name="c_proj",
            **kw,
        )
        # Both matmuls on [B*L, .] rows, for the reason given in dense_on_rows.
        h = c_fc(x.reshape(-1, width)).reshape(*x.shape[:-1], self.mlp_width)
        h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
        h = activation_fn(self.quick_gelu, self.gelu_approximate)(h)
        return c_proj(h.reshape(-1, self.mlp_width)).reshape(x.shape)


def block_mlp(owner: nn.Module, inits: dict[str, Callable], kw: dict[str, Any]) -> MLP:
    """The "mlp" submodule of a block-like module (its mlp_width, activation, and the c_* initialisers
    of `block_initializers`); called inside the owner's compact __call__, so the owner is its parent."""
    return MLP(
        owner.mlp_width,
        quick_gelu=owner.quick_gelu,
        gelu_approximate=owner.gelu_approximate,
        inits={k: v for k, v in inits.items() if k.startswith("c_")},
        name="mlp",
        **kw,
    )


class ResidualAttentionBlock(nn.Module):
    heads: int
    mlp_width: int
    quick_gelu: bool = False
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_impl: str | None = None
    gelu_approximate: bool = False
    norm_eps: float = LN_EPS
    # Under nn.scan, also emit each block's output so a caller can pick an intermediate layer.
    emit_hidden: bool = False
    init_scheme: str = "text"  # see INIT_SCHEMES
    depth: int = 1  # layers in the tower, for the "text" scheme's residual projection std

    @nn.compact
    def __call__(
        self, x: jax.Array, _: Any = None, out_rows: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        """x [B, L, W] -> [B, L, W]. With `out_rows` [B] (int), computes and returns only those rows of
        the output, [B, 1, W]: every row is still normalised and projected to keys and values, but the
        queries, output projection and MLP run on one row per sequence."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inits = block_initializers(self.init_scheme, x.shape[-1], self.mlp_width, self.depth)
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        h = LayerNorm(name="ln_1", eps=self.norm_eps, **kw)(x)
        attn = Attention(
            self.heads,
            self.causal,
            attention_impl=self.attention_impl,
            qkv_init=inits["qkv"],
            out_init=inits["out"],
            name="attn",
            **kw,
        )
        if out_rows is not None:
            x = take_rows(x, out_rows)
        x = x + attn(h, out_rows)
        h = LayerNorm(name="ln_2", eps=self.norm_eps, **kw)(x)
        x = x + block_mlp(self, inits, kw)(h)
        # Returned as a (carry, output) pair so the same module works under nn.scan.
        return x, (x if self.emit_hidden else None)


class AttentionPool(nn.Module):
    """Multihead attention pooling (MAP, as SigLIP's image tower pools): a learned probe queries the
    tokens, then a pre-LN MLP with a residual, as in a block without its first LayerNorm.

    Parameters: probe [1, W]; attn (the blocks' packed q/k/v and out projections); ln_mlp; mlp.
    Returns the probe's output [B, W].
    """

    heads: int
    mlp_width: int
    quick_gelu: bool = False
    gelu_approximate: bool = False
    norm_eps: float = LN_EPS
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, width = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inits = block_initializers("torch", width, self.mlp_width, 1)
        probe = self.param(
            "probe", _p(nn.initializers.normal(width**-0.5), (None, "embed")), (1, width), self.param_dtype
        )
        queries = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, width))
        attn = Attention(self.heads, qkv_init=inits["qkv"], out_init=inits["out"], name="attn", **kw)
        h = attn(queries, context=x)
        h = h + block_mlp(self, inits, kw)(LayerNorm(name="ln_mlp", eps=self.norm_eps, **kw)(h))
        return h[:, 0]


# Names accepted for `remat_policy`; "none" disables rematerialisation.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """`layers` residual blocks, either unrolled (`resblocks_{i}`) or scanned (`resblocks`, stacked)."""

    layers: int
    heads: int
    mlp_width: int
    quick_gelu: bool = False
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan: bool = False
    gelu_approximate: bool = False
    norm_eps: float = LN_EPS
    remat_policy: str = "none"
    attention_impl: str | None = None
    init_scheme: str = "text"  # see INIT_SCHEMES

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        return_layer: int | tuple[int, ...] | None = None,
        pool_rows: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Run the blocks on x [B, L, W] and return their output [B, L, W].

        With `return_layer=i`, return the output of block i (Python indexing) instead; with a tuple of
        block indices, the tuple of their outputs from one pass (a text encoder's conditioning takes the
        penultimate block and the last one's pooled row together). With `pool_rows`
        [B] (int), return only row pool_rows[b] of each sequence, [B, W]: the token a tower pools
        (class token, end-of-text). Unrolled, the last block then computes just that row past its
        keys and values, which is exact (no other output row feeds it) and saves ~1/layers of the
        tower's matmuls in inference and training alike; scanned, all rows are computed and one kept.
        """
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"unknown remat_policy {self.remat_policy!r}; choose from {list(REMAT_POLICIES)}"
            )
        block_cls: Any = ResidualAttentionBlock
        if self.remat_policy != "none":
            block_cls = nn.remat(
                block_cls, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan
            )
        kw = dict(
            heads=self.heads,
            mlp_width=self.mlp_width,
            quick_gelu=self.quick_gelu,
            gelu_approximate=self.gelu_approximate,
            norm_eps=self.norm_eps,
            causal=self.causal,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_impl=self.attention_impl,
            init_scheme=self.init_scheme,
            depth=self.layers,
        )
        if return_layer is not None and pool_rows is not None:
            raise ValueError("return_layer and pool_rows are exclusive: a pooled row is a last-layer output")
        several = isinstance(return_layer, tuple)
        asked = return_layer if several else () if return_layer is None else (return_layer,)
        wanted = [range(self.layers)[i] for i in asked]
        stop = self.layers if return_layer is None else max(wanted, default=-1) + 1
        if not self.scan:
            outputs = {}
            for i in range(stop):
                rows = pool_rows if i == self.layers - 1 else None
                x, _ = block_cls(name=f"resblocks_{i}", **kw)(x, None, rows)
                outputs[i] = x
            if several:
                return tuple(outputs[i] for i in wanted)
            return x if pool_rows is None else x[:, 0]
        # A scan runs every layer; for an intermediate layer it emits all outputs and we pick one.
        emit = return_layer is not None
        x, hidden = nn.scan(
            block_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            length=self.layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(name="resblocks", emit_hidden=emit, **kw)(x, None)
        if several:
            return tuple(hidden[i] for i in wanted)
        if emit:
            return hidden[stop - 1]
        return x if pool_rows is None else take_rows(x, pool_rows)[:, 0]


def stack_layers(params: dict, prefix: str = "resblocks") -> dict:
    """Per-layer layout {resblocks_0: t0, resblocks_1: t1, ...} -> scanned {resblocks: stacked}."""
    return _map_transformers(params, prefix, _stack)


def unstack_layers(params: dict, prefix: str = "resblocks") -> dict:
    """Scanned {resblocks: stacked} -> per-layer {resblocks_0: ..., resblocks_1: ...}."""
    return _map_transformers(params, prefix, _unstack)


def _stack(tree: dict, prefix: str) -> dict:
    keys = [k for k in tree if k.startswith(prefix + "_")]
    if not keys:
        return tree
    n = len(keys)
    layers = [tree[f"{prefix}_{i}"] for i in range(n)]
    out = {k: v for k, v in tree.items() if k not in keys}
    out[prefix] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def _unstack(tree: dict, prefix: str) -> dict:
    if prefix not in tree:
        return tree
    stacked = tree[prefix]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in tree.items() if k != prefix}
    for i in range(n):
        out[f"{prefix}_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return out


def _map_transformers(tree: Any, prefix: str, fn: Callable[[dict, str], dict]) -> Any:
    if not isinstance(tree, dict):
        return tree
    tree = fn(tree, prefix)
    return {k: _map_transformers(v, prefix, fn) for k, v in tree.items()}
