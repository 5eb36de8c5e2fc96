"""clip_jax: CLIP in JAX/Flax, numerically identical to OpenAI CLIP / open_clip.

The names below load lazily, so that `import clip_jax.tokenizer` (e.g. in a tf.data pipeline) does not
pull in jax and flax.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLIP": "clip_jax.models",
    "CLIPConfig": "clip_jax.models",
    "MODEL_CONFIGS": "clip_jax.models",
    "TextConfig": "clip_jax.models",
    "VisionConfig": "clip_jax.models",
    "get_model_config": "clip_jax.models",
    "init_params": "clip_jax.models",
    "interpolate_pos_embed": "clip_jax.models",
    "l2_normalize": "clip_jax.models",
    "stack_layers": "clip_jax.models",
    "unstack_layers": "clip_jax.models",
    "export_open_clip": "clip_jax.weights",
    "load_params": "clip_jax.weights",
    "load_pretrained": "clip_jax.weights",
    "save_params": "clip_jax.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clip_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
