"""Infer a CLIPConfig from the tensor shapes of an open_clip-layout state dict.

Shapes give every size except two things. The number of attention heads leaves no trace: a width-1280
tower has the same tensors with 20 heads of 64 (OpenAI's width) as with ViT-H-14's 16 heads of 80, and
computes different features. So the heads are never guessed: shapes that match a named config
(`clip_jax.models.MODEL_CONFIGS`, which holds every open_clip config clip_jax can build) take its heads,
and shapes that match none raise a ValueError asking for the model name. The activation (QuickGELU or
GELU) leaves no trace either, so the caller must say which.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from clip_jax.models.config import MODEL_CONFIGS, CLIPConfig


def mlp_ratio(mlp_width: int, width: int) -> float:
    """A ratio r with int(width * r) == mlp_width (the plain quotient can round just below)."""
    r = mlp_width / width
    return r if int(width * r) == mlp_width else (mlp_width + 0.5) / width


def _layers(state_dict: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _get(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"cannot infer the model config: the checkpoint has no key {key!r}")
    return tuple(state_dict[key].shape)


def shape_signature(cfg: CLIPConfig) -> dict[str, Any]:
    """Everything about `cfg` that its parameter shapes determine (all but heads and activation).

    A ResNet tower's signature has its own keys (blocks per stage, stem width), so it never equals a ViT's.
    """
    v, t = cfg.vision, cfg.text
    if v.resnet:
        vision = {"vision.stage_blocks": v.layers, "vision.width": v.width, "vision.grid_size": v.grid_size}
    else:
        vision = {
            "vision.patch_size": v.patch_size,
            "vision.grid_size": v.grid_size,
            "vision.width": v.width,
            "vision.layers": v.layers,
            "vision.mlp_width": v.mlp_width,
            # SigLIP's switches that show in the keys (pool_type "map" as the pooling head's probe).
            "vision.parts": _vit_parts(
                v.class_token, v.pool_type == "map", v.patch_bias, not v.no_ln_pre, v.proj
            ),
        }
    return {
        "embed_dim": cfg.embed_dim,
        **vision,
        "text.context_length": t.context_length,
        "text.vocab_size": t.vocab_size,
        "text.width": t.width,
        "text.layers": t.layers,
        "text.mlp_width": t.mlp_width,
        "text.proj_bias": t.proj_bias,
    }


def _vit_parts(class_token: bool, attn_pool: bool, patch_bias: bool, ln_pre: bool, proj: bool) -> str:
    """The optional parts of a ViT tower that it has, by name ("class_token,ln_pre,proj" for OpenAI's)."""
    names = ("class_token", "attn_pool", "patch_bias", "ln_pre", "proj")
    flags = (class_token, attn_pool, patch_bias, ln_pre, proj)
    return ",".join(n for n, f in zip(names, flags, strict=True) if f)


def _grid(state_dict: Mapping[str, Any], key: str, prefix_tokens: int = 1) -> int:
    num_pos = _get(state_dict, key)[0]
    grid = math.isqrt(num_pos - prefix_tokens)
    if grid * grid != num_pos - prefix_tokens:
        raise ValueError(f"{key} has {num_pos - prefix_tokens} positions, not a square grid")
    return grid


def _stage_blocks(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
    """Bottleneck blocks per stage of a ResNet tower: 1 + the largest index of visual.layer{1-4}.{i}."""
    pat = re.compile(r"visual\.layer([1-4])\.(\d+)\.")
    counts = [0] * 4
    for k in state_dict:
        if m := pat.match(k):
            counts[int(m.group(1)) - 1] = max(counts[int(m.group(1)) - 1], int(m.group(2)) + 1)
    return tuple(counts)


def _signature_of(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if "visual.attnpool.positional_embedding" in state_dict:  # a ModifiedResNet (open_clip's names)
        vision = {
            "vision.stage_blocks": _stage_blocks(state_dict),
            "vision.width": _get(state_dict, "visual.conv3.weight")[0],  # the stem's output channels
            "vision.grid_size": _grid(state_dict, "visual.attnpool.positional_embedding"),
        }
    else:
        width, _, patch, _ = _get(state_dict, "visual.conv1.weight")
        class_token = "visual.class_embedding" in state_dict
        vision = {
            "vision.patch_size": patch,
            "vision.grid_size": _grid(state_dict, "visual.positional_embedding", int(class_token)),
            "vision.width": width,
            "vision.layers": _layers(state_dict, "visual."),
            "vision.mlp_width": _get(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
            "vision.parts": _vit_parts(
                class_token,
                "visual.attn_pool.probe" in state_dict,
                "visual.conv1.bias" in state_dict,
                "visual.ln_pre.weight" in state_dict,
                "visual.proj" in state_dict,
            ),
        }
    context_length, t_width = _get(state_dict, "positional_embedding")
    # open_clip's proj_bias tower has a Linear ([embed, width] weight), the plain one a [width, embed] matrix.
    proj_bias = "text_projection.weight" in state_dict
    embed_dim = (
        _get(state_dict, "text_projection.weight")[0]
        if proj_bias
        else _get(state_dict, "text_projection")[-1]
    )
    return {
        "embed_dim": embed_dim,
        **vision,
        "text.context_length": context_length,
        "text.vocab_size": _get(state_dict, "token_embedding.weight")[0],
        "text.width": t_width,
        "text.layers": _layers(state_dict, ""),
        "text.mlp_width": _get(state_dict, "transformer.resblocks.0.mlp.c_fc.weight")[0],
        "text.proj_bias": proj_bias,
    }


def infer_config(state_dict: Mapping[str, Any], quick_gelu: bool) -> CLIPConfig:
    """The named config whose parameters have the shapes found in `state_dict` (open_clip key names).

    Only `.shape` of each value is read (and the value of `logit_bias`, which sets `init_logit_bias`).
    Raises ValueError, asking for the model name, when no named config has these shapes, or when several
    with different heads do.
    """
    sig = _signature_of(state_dict)
    bias = state_dict.get("logit_bias")
    init_logit_bias = None if bias is None else float(np.asarray(bias).reshape(()))
    matches: dict[CLIPConfig, list[str]] = {}
    for name, named in MODEL_CONFIGS.items():
        if named.gelu_approximate and quick_gelu:
            continue  # SigLIP's tanh GELU and QuickGELU are exclusive
        if shape_signature(named) == sig:
            cfg = named.replace(quick_gelu=quick_gelu, init_logit_bias=init_logit_bias)
            matches.setdefault(cfg, []).append(name)
    how = (
        "pass the model name (--model on the command line, `name` in load_pretrained) or a CLIPConfig, "
        "or put the model's open_clip_config.json beside the weights"
    )
    if not matches:
        sizes = ", ".join(f"{k} {v}" for k, v in sig.items())
        raise ValueError(
            f"cannot infer the model config: the checkpoint's shapes ({sizes}) match no named model in "
            "clip_jax.models.MODEL_CONFIGS, and the number of attention heads leaves no trace in the "
            f"weights (ViT-H-14's heads are 80 wide, not OpenAI's 64): {how}"
        )
    if len(matches) > 1:
        found = "; ".join(
            f"{'/'.join(names)}: {cfg.vision.heads} vision and {cfg.text.heads} text heads"
            for cfg, names in matches.items()
        )
        raise ValueError(
            f"cannot infer the model config: its shapes fit models with different heads ({found}): {how}"
        )
    return next(iter(matches))
