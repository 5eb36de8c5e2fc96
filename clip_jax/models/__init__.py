"""Flax CLIP models."""

from clip_jax.models.clip import CLIP, init_params, l2_normalize, label_probabilities, random_params
from clip_jax.models.config import MODEL_CONFIGS, CLIPConfig, TextConfig, VisionConfig, get_model_config
from clip_jax.models.transformer import stack_layers, unstack_layers
from clip_jax.models.vit import interpolate_pos_embed

__all__ = [
    "CLIP",
    "CLIPConfig",
    "MODEL_CONFIGS",
    "TextConfig",
    "VisionConfig",
    "get_model_config",
    "init_params",
    "interpolate_pos_embed",
    "l2_normalize",
    "label_probabilities",
    "random_params",
    "stack_layers",
    "unstack_layers",
]
