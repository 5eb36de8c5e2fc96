"""A text tower on its own: the config and model of a text-only checkpoint (a diffusion model's conditioning).

Stable Diffusion ships its CLIP text encoders without an image tower: transformers' `CLIPTextModel` (SD 1,
SD 2, SDXL's first encoder, no projection) and `CLIPTextModelWithProjection` (SDXL's second). The model is
clip_jax's `TextTransformer`, and its params are exactly a CLIP's `params["text"]` subtree, so the text
tower of any CLIP checkpoint serves as a text encoder too (`TextEncoderConfig.from_clip`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import CLIPConfig, TextConfig
from clip_jax.models.text import TextTransformer


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """A text tower and what CLIPConfig otherwise says about it (activation, LayerNorm eps, projection).

    `embed_dim` None means no `text_projection` (CLIPTextModel); an int is the projection's width.
    """

    text: TextConfig = TextConfig()
    embed_dim: int | None = None
    quick_gelu: bool = False
    gelu_approximate: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.quick_gelu and self.gelu_approximate:
            raise ValueError("quick_gelu and gelu_approximate are exclusive: pick one activation")

    @classmethod
    def from_clip(cls, cfg: CLIPConfig) -> TextEncoderConfig:
        """The text tower of a two-tower CLIP config (projected to its embed_dim)."""
        # The tower's own GELU form, which may differ from the model's (open_clip's SigLIP 2: `open_clip_gelu`).
        text = dataclasses.replace(cfg.text, gelu_approximate=None)
        return cls(text, cfg.embed_dim, cfg.quick_gelu, cfg.text_gelu_approximate, cfg.norm_eps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextEncoderConfig:
        d = dict(d)
        text = d.pop("text", {}) or {}
        return cls(text=text if isinstance(text, TextConfig) else TextConfig(**text), **d)


def text_encoder(cfg: TextEncoderConfig, **kw: Any) -> TextTransformer:
    """The TextTransformer `cfg` describes; `kw` are its other settings (dtype, scan, attention_impl...)."""
    return TextTransformer(
        cfg.text,
        cfg.embed_dim,
        quick_gelu=cfg.quick_gelu,
        gelu_approximate=cfg.gelu_approximate,
        norm_eps=cfg.norm_eps,
        **kw,
    )


@functools.lru_cache(maxsize=8)
def text_encoder_param_shapes(cfg: TextEncoderConfig) -> dict:
    """Per-layer params tree of ShapeDtypeStructs (float32) of `text_encoder(cfg)`; nothing is allocated.
    Cached (a large tower's init takes seconds to trace): treat the result as read-only."""
    model = text_encoder(cfg)
    tokens = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), tokens)["params"]))
