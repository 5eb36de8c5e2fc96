"""Pretrained weights: import from OpenAI / open_clip / HF checkpoints, export to open_clip, orbax params."""

from clip_jax.weights.infer import infer_config
from clip_jax.weights.load import (
    export_open_clip,
    load_params_checked,
    load_pretrained,
    read_open_clip_state_dict,
    resolve_config,
)
from clip_jax.weights.params_io import load_params, save_params

__all__ = [
    "export_open_clip",
    "infer_config",
    "load_params",
    "load_params_checked",
    "load_pretrained",
    "read_open_clip_state_dict",
    "resolve_config",
    "save_params",
]
