"""OpenAI's ModifiedResNet image tower (RN50 and its siblings), laid out like open_clip's.

Differences from torchvision's ResNet, as in open_clip/modified_resnet.py: a stem of three 3x3 convs and
a 2x2 average pool (no max pool); anti-aliased Bottleneck blocks, whose stride-2 step is an average pool
after the 3x3 conv and before the 1x1 conv of the downsample branch (every conv has stride 1 but the
first of the stem); and a head that pools by one query (the mean of the feature map) of multi-head
attention over the flattened map with a learned positional embedding.

BatchNorm keeps its running statistics *inside the params tree*, as non-trainable leaves named
`running_mean` / `running_var` beside `scale` / `bias` (`BATCH_STAT_NAMES`). So every consumer of a
params tree (the evaluators' `model.apply({'params': p}, ..., method=CLIP.encode_image)`, the loaders,
the exporter, orbax checkpoints of the train state, the sharding rules) handles a ResNet as it handles a
ViT, and eval mode (train=False) normalises with the stored statistics, as torch's eval() does. In
training (train=True) BatchNorm normalises with the statistics of the batch it is given (under jit on a
mesh: the global batch) and, when the `batch_stats` collection is mutable, puts the updated running
statistics there (torch's update: momentum 0.1, unbiased batch variance); `clip_jax.train.step` writes
them into the params after the optimizer update (`merge_batch_stats`). Their gradient is zero: in
training they are not read, in eval mode they pass through stop_gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import VisionConfig
from clip_jax.models.transformer import (
    REMAT_POLICIES,
    _p,
    dense_on_rows,
    torch_default_bias_init,
    torch_default_init,
)
from clip_jax.models.vit import interpolate_pos_embed

# torch.nn.BatchNorm2d's defaults, which OpenAI's and open_clip's ResNets use.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
# Flax collection the train-mode BatchNorms write their updated running statistics into.
BATCH_STATS = "batch_stats"
# Leaf names of the running statistics in the params tree (torch's buffer names).
BATCH_STAT_NAMES = ("running_mean", "running_var")
EXPANSION = 4  # Bottleneck output channels per planes


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d on NHWC activations, statistics in float32 (see the module docstring)."""

    train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", _p(nn.initializers.ones, ("channels",)), (c,), self.param_dtype)
        bias = self.param("bias", _p(nn.initializers.zeros, ("channels",)), (c,), self.param_dtype)
        # float32 whatever param_dtype: a bf16 running variance would lose the update's small steps.
        running_mean = self.param("running_mean", _p(nn.initializers.zeros, ("channels",)), (c,), jnp.float32)
        running_var = self.param("running_var", _p(nn.initializers.ones, ("channels",)), (c,), jnp.float32)
        x32 = x.astype(jnp.float32)
        if self.train:
            n = x.shape[0] * x.shape[1] * x.shape[2]
            if n < 2:
                # torch refuses too ("Expected more than 1 value per channel when training").
                raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got {x.shape}")
            # Two passes (mean, then the mean square about it) in float32, as torch computes them.
            mean = jnp.mean(x32, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
            if self.is_mutable_collection(BATCH_STATS):
                m = BN_MOMENTUM
                batch_mean, batch_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
                # torch updates the running variance with the unbiased batch variance.
                self.put_variable(BATCH_STATS, "running_mean", (1 - m) * running_mean + m * batch_mean)
                self.put_variable(
                    BATCH_STATS, "running_var", (1 - m) * running_var + m * batch_var * (n / (n - 1))
                )
        else:
            mean, var = jax.lax.stop_gradient(running_mean), jax.lax.stop_gradient(running_var)
        inv = jax.lax.rsqrt(var + BN_EPS) * scale.astype(jnp.float32)
        return ((x32 - mean) * inv + bias.astype(jnp.float32)).astype(self.dtype)


class Conv(nn.Module):
    """nn.Conv2d without bias on NHWC; kernel [k, k, in, out] (torch's [out, in, k, k] transposed)."""

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            # nn.Conv2d's default init, which open_clip's ModifiedResNet keeps.
            _p(torch_default_init(in_axis=(0, 1, 2), out_axis=3), (None, None, None, "channels")),
            (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )
        kernel = kernel.astype(self.dtype)
        if k == 1 and self.stride == 1:
            # A 1x1 conv is a matmul on pixel rows; XLA:CPU runs it as a GEMM faster than as a convolution.
            return dense_on_rows(x, kernel[0, 0])
        pad = (k - 1) // 2  # torch's padding=1 for the 3x3 convs: same size at stride 1
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def avg_pool(x: jax.Array, k: int) -> jax.Array:
    """nn.AvgPool2d(k) on NHWC: k x k windows at stride k, a remainder row or column dropped (floor mode)."""
    if k == 1:
        return x
    b, h, w, c = x.shape
    x = x[:, : h // k * k, : w // k * k]
    return jnp.mean(x.reshape(b, h // k, k, w // k, k, c), axis=(2, 4))


class Bottleneck(nn.Module):
    """conv1x1-bn-relu, conv3x3-bn-relu, avgpool(stride), conv1x1-bn, + identity or downsample, relu."""

    planes: int
    stride: int = 1
    train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = lambda name, **extra: BatchNorm(train=self.train, name=name, **kw, **extra)  # noqa: E731
        out_width = self.planes * EXPANSION
        h = nn.relu(bn("bn1")(Conv(self.planes, 1, name="conv1", **kw)(x)))
        h = nn.relu(bn("bn2")(Conv(self.planes, 3, name="conv2", **kw)(h)))
        h = avg_pool(h, self.stride)
        h = bn("bn3")(Conv(out_width, 1, name="conv3", **kw)(h))
        if self.stride > 1 or x.shape[-1] != out_width:
            # open_clip's downsample Sequential: "-1" the pool, "0" the conv, "1" the BatchNorm.
            x = bn("downsample_1")(Conv(out_width, 1, name="downsample_0", **kw)(avg_pool(x, self.stride)))
        return nn.relu(h + x)


class AttentionPool2d(nn.Module):
    """open_clip's AttentionPool2d: the mean of the map, prepended to its pixels, attends to all of them.

    q/k/v/c_proj kernels are [in, out] (torch's Linear weights transposed); the q/k/v output axis is
    heads-major (head h is columns h*D:(h+1)*D), so it shards by heads like the transformer's.
    """

    heads: int
    output_dim: int
    grid_size: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        pos = self.param(
            "positional_embedding",
            _p(nn.initializers.normal(c**-0.5), (None, "embed")),
            (self.grid_size**2 + 1, c),
            self.param_dtype,
        )
        if h != w:
            raise ValueError(f"the attention pool's positional embedding is a square grid; got a {h}x{w} map")
        # Another image size gives another map: its embedding is resized (bicubic) as for a ViT's.
        pos = interpolate_pos_embed(pos, h).astype(self.dtype)
        x = x.reshape(b, h * w, c)
        x = jnp.concatenate([jnp.mean(x, axis=1, keepdims=True), x], axis=1) + pos
        std = c**-0.5  # open_clip's init_parameters: normal(c_proj.in_features ** -0.5) for all four

        def proj(name: str, out: int, axes: tuple[str | None, str | None]) -> nn.Dense:
            return nn.Dense(
                out,
                kernel_init=_p(nn.initializers.normal(std), axes),
                bias_init=_p(torch_default_bias_init(c), axes[1:]),
                name=name,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )

        d = c // self.heads
        # Only the first (mean) token's output is kept, so only its query is computed.
        q = proj("q_proj", c, ("embed", "heads"))(x[:, :1]).reshape(b, 1, self.heads, d)
        k = proj("k_proj", c, ("embed", "heads"))(x).reshape(b, -1, self.heads, d)
        v = proj("v_proj", c, ("embed", "heads"))(x).reshape(b, -1, self.heads, d)
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, c)
        return proj("c_proj", self.output_dim, ("heads", "joint"))(out)


class ModifiedResNet(nn.Module):
    """images [B, H, W, 3] (OpenAI-normalised) -> [B, embed_dim]; the same interface as VisionTransformer."""

    cfg: VisionConfig
    embed_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"unknown remat_policy {self.remat_policy!r}; choose from {list(REMAT_POLICIES)}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        width = cfg.width
        x = images.astype(self.dtype)
        for i, (features, stride) in enumerate(((width // 2, 2), (width // 2, 1), (width, 1)), start=1):
            x = Conv(features, 3, stride, name=f"conv{i}", **kw)(x)
            x = nn.relu(BatchNorm(train=train, name=f"bn{i}", **kw)(x))
        x = avg_pool(x, 2)
        block_cls: Any = Bottleneck
        if self.remat_policy != "none":
            block_cls = nn.remat(Bottleneck, policy=REMAT_POLICIES[self.remat_policy])
        for stage, blocks in enumerate(cfg.layers):
            planes = width * 2**stage
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                x = block_cls(planes, stride, train, name=f"layer{stage + 1}_{i}", **kw)(x)
        return AttentionPool2d(cfg.heads, self.embed_dim, cfg.grid_size, name="attnpool", **kw)(x)


def is_batch_stat(path: tuple[str, ...]) -> bool:
    """True for a params-tree path that holds a BatchNorm running statistic (not trained by gradients)."""
    return bool(path) and path[-1] in BATCH_STAT_NAMES


def batch_stats_of(params: Mapping[str, Any]) -> dict:
    """The running statistics of `params`, in the nesting of the params tree ({} for a ViT model)."""
    out: dict = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            sub = batch_stats_of(v)
            if sub:
                out[k] = sub
        elif k in BATCH_STAT_NAMES:
            out[k] = v
    return out


def merge_batch_stats(params: Mapping[str, Any], stats: Mapping[str, Any]) -> dict:
    """`params` with the leaves that `stats` (a `batch_stats` collection, or a part of one) holds replaced."""
    out = dict(params)
    for k, v in stats.items():
        if isinstance(v, Mapping):
            out[k] = merge_batch_stats(params[k], v)
        else:
            if k not in BATCH_STAT_NAMES or k not in params:
                raise ValueError(f"batch statistic {k!r} has no place in the params tree")
            out[k] = jnp.asarray(v, params[k].dtype)
    return out
