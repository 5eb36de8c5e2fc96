"""Model FLOPs of a CLIP train step, and accelerators' peak bf16 FLOP/s: the two halves of MFU.

MFU = model FLOPs per step / median step time / the device's peak dense bf16 FLOP/s. The model FLOPs are
counted from the exact matmul shapes (XLA's cost analysis is no substitute on GPU: it leaves out the
cuBLAS/cuDNN library calls); rematerialised recomputation is not counted.
"""

from __future__ import annotations

from typing import Any

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' datasheets, matched as substrings of
# jax's `device_kind` in this order (the PCIe/NVL parts before the generic H100 name, which is the SXM).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),  # "NVIDIA H100 80GB HBM3" = SXM5
    ("A100", 312.0e12),
    ("L40S", 362.0e12),
)


def transformer_forward_flops(
    tokens: int, width: int, mlp_width: int, layers: int, causal: bool, pooled_last: bool = True
) -> float:
    """Forward matmul FLOPs of `layers` pre-LN blocks for ONE sequence of `tokens` tokens.

    Per block (a multiply-add = 2 FLOPs; heads * head_dim = width in both towers):
      qkv projection   2 * T * W * 3W
      QK^T             2 * P * W       P = query/key pairs: T*T, or T*(T+1)/2 under the causal mask
      AV               2 * P * W
      out projection   2 * T * W * W
      MLP c_fc, c_proj 2 * T * W * M  each
    With `pooled_last` (the unrolled model; `Transformer(pool_rows=...)`), the last block computes one
    output row: qkv on all T rows, one query against T keys (P = T), out projection and MLP on 1 row.
    LayerNorm, softmax, GELU, bias and residual adds are not matmuls and are not counted.
    """

    def block(rows: int, pairs: float) -> float:
        return (
            2 * tokens * width * 3 * width
            + 2 * 2 * pairs * width
            + 2 * rows * width * (width + 2 * mlp_width)
        )

    full = block(tokens, tokens * (tokens + 1) / 2 if causal else tokens * tokens)
    if not pooled_last:
        return layers * full
    return (layers - 1) * full + block(1, tokens)


def train_flops(cfg: Any, batch: int, pooled_last: bool = True) -> dict[str, float]:
    """Model FLOPs of one train step of CLIP `cfg` on `batch` image-text pairs.

    Training = 3 x forward (forward, grad w.r.t. activations, grad w.r.t. weights) for every matmul,
    except the patch embedding, whose input is the pixels: it needs no input gradient, so 2 x forward.
    Token embedding is a gather (0 FLOPs). The loss logits image @ text.T are [B, E] x [E, B].
    """
    v, t, embed = cfg.vision, cfg.text, cfg.embed_dim
    patches = v.grid_size**2
    patch_embed = 2 * patches * (3 * v.patch_size**2) * v.width  # conv1 as a [P, 3p^2] x [3p^2, W] matmul
    vision = transformer_forward_flops(patches + 1, v.width, v.mlp_width, v.layers, False, pooled_last)
    vision += 2 * v.width * embed  # ln_post(class token) @ proj
    text = transformer_forward_flops(t.context_length, t.width, t.mlp_width, t.layers, True, pooled_last)
    text += 2 * t.width * embed  # EOT token @ text_projection
    logits = 2 * batch * batch * embed
    forward = batch * (patch_embed + vision + text) + logits
    total = 3 * (batch * (vision + text) + logits) + 2 * batch * patch_embed
    return {"forward": forward, "train": total, "per_image_train": total / batch}


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of a jax `device_kind`, or None for a device not in PEAK_BF16_FLOPS."""
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None
