"""Infer a CLIPConfig from the tensor shapes of an open_clip-layout state dict.

Shapes give every size except two things: the number of attention heads (OpenAI and open_clip use
64-wide heads, assumed here) and the activation (QuickGELU or GELU leave no trace in the weights, so the
caller must say which).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig

HEAD_WIDTH = 64


def mlp_ratio(mlp_width: int, width: int) -> float:
    """A ratio r with int(width * r) == mlp_width (the plain quotient can round just below)."""
    r = mlp_width / width
    return r if int(width * r) == mlp_width else (mlp_width + 0.5) / width


def _layers(state_dict: Mapping[str, np.ndarray], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _get(state_dict: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"cannot infer the model config: the checkpoint has no key {key!r}")
    return tuple(state_dict[key].shape)


def infer_config(state_dict: Mapping[str, np.ndarray], quick_gelu: bool) -> CLIPConfig:
    """The CLIPConfig whose parameters have the shapes found in `state_dict` (open_clip key names)."""
    width, _, patch, _ = _get(state_dict, "visual.conv1.weight")
    num_pos = _get(state_dict, "visual.positional_embedding")[0]
    grid = math.isqrt(num_pos - 1)
    if grid * grid != num_pos - 1:
        raise ValueError(f"visual.positional_embedding has {num_pos - 1} patch positions, not a square grid")
    v_mlp = _get(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
    vision = VisionConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=_layers(state_dict, "visual."),
        head_width=HEAD_WIDTH,
        mlp_ratio=mlp_ratio(v_mlp, width),
    )
    context_length, t_width = _get(state_dict, "positional_embedding")
    t_mlp = _get(state_dict, "transformer.resblocks.0.mlp.c_fc.weight")[0]
    text = TextConfig(
        context_length=context_length,
        vocab_size=_get(state_dict, "token_embedding.weight")[0],
        width=t_width,
        heads=max(1, t_width // HEAD_WIDTH),
        layers=_layers(state_dict, ""),
        mlp_ratio=mlp_ratio(t_mlp, t_width),
    )
    bias = state_dict.get("logit_bias")
    return CLIPConfig(
        embed_dim=_get(state_dict, "text_projection")[-1],
        vision=vision,
        text=text,
        quick_gelu=quick_gelu,
        init_logit_bias=None if bias is None else float(np.asarray(bias).reshape(())),
    )
