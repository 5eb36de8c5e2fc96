"""`load_text_encoder`: a text-only model (TextTransformer and its params) from any supported checkpoint.

A HF `CLIPTextModel` / `CLIPTextModelWithProjection` directory (Stable Diffusion's `text_encoder`, SDXL's
`text_encoder_2`) loads as it is, with no image tower invented; any two-tower checkpoint clip_jax reads
(open_clip, OpenAI, HF CLIPModel, a clip_jax params dir) gives its text tower, projection included.
Keys and shapes are checked as `load_pretrained` checks them (one mapping, `clip_jax.weights.open_clip`).
"""

from __future__ import annotations

import os
from typing import Any

import jax

from clip_jax.models.text import TextTransformer
from clip_jax.models.text_encoder import TextEncoderConfig, text_encoder, text_encoder_param_shapes
from clip_jax.weights import hf, load, open_clip, params_io, readers


def load_text_encoder_params(
    path: str | os.PathLike, name: str | None = None, quick_gelu: bool | None = None
) -> tuple[TextEncoderConfig, dict]:
    """(config, per-layer numpy params) of the text encoder at `path`; `name` and `quick_gelu` are
    `load_pretrained`'s, for two-tower checkpoints whose files do not say their config."""
    if params_io.is_params_dir(path):
        cfg, params = load.load_params_checked(path, name, quick_gelu)
        return TextEncoderConfig.from_clip(cfg), params["text"]
    ckpt = readers.read_checkpoint(path)
    if not hf.is_text_only(ckpt.state_dict):
        oc = load.read_open_clip_state_dict(path)
        cfg = load.resolve_config(name, oc, quick_gelu)
        return TextEncoderConfig.from_clip(cfg), load.convert_state_dict(oc, cfg)["text"]
    config_file = ckpt.path.parent / "config.json"
    if ckpt.hf_config is None:
        raise FileNotFoundError(
            f"{config_file} is missing: a CLIPTextModel's heads and activation are read from its config.json"
        )
    with load._naming(ckpt.path):
        sd, origin = hf.hf_to_open_clip(ckpt.state_dict)
    with load._naming(config_file):
        cfg = hf.text_encoder_config_from_hf(ckpt.hf_config, projection="text_projection" in sd)
    if quick_gelu is not None:
        cfg = TextEncoderConfig(cfg.text, cfg.embed_dim, quick_gelu, False, cfg.norm_eps)
    shapes = text_encoder_param_shapes(cfg)
    open_clip.check_state_dict(sd, shapes, f"the config in {config_file}", origin, f"checkpoint {ckpt.path}")
    return cfg, open_clip.state_dict_to_params(sd, shapes)


def load_text_encoder(
    path: str | os.PathLike, name: str | None = None, quick_gelu: bool | None = None, **model_kwargs: Any
) -> tuple[TextTransformer, dict]:
    """(`TextTransformer`, params) of the text encoder at `path` (see `load_text_encoder_params`);
    `model_kwargs` are the model's settings (dtype, attention_impl, ...). Its config is `model.cfg`'s
    tower plus `model.embed_dim` (None without a projection); `text_encoder_config(model)` rebuilds it."""
    cfg, params = load_text_encoder_params(path, name, quick_gelu)
    return text_encoder(cfg, **model_kwargs), jax.device_put(params)


def text_encoder_config(model: TextTransformer) -> TextEncoderConfig:
    """The TextEncoderConfig of a text tower module (for export: `clip_jax.weights.hf_export`)."""
    return TextEncoderConfig(
        model.cfg, model.embed_dim, model.quick_gelu, model.gelu_approximate, model.norm_eps
    )
