"""From prompts to a diffusion model's text conditioning, in JAX: what Stable Diffusion takes from CLIP.

    model, params = load_text_encoder("stable-diffusion-2-1/text_encoder")
    cond = encode_prompts(model, params, ["a red fox"], negative_prompts="blurry", encoding=SD2)
    cond.prompt_embeds, cond.negative_prompt_embeds      # [1, 77, 1024] each, from one jitted pass

Each pipeline reads its text encoder its own way (`PromptEncoding`): which block's hidden states, whether
the final LayerNorm is applied to them, which token pads the prompt to 77, whether the pooled projected
output is taken too. The presets are diffusers' (docs/text_conditioning.md cites the code):
SD 1 and SD 2 take `last_hidden_state` (SD 2's checkpoint is OpenCLIP ViT-H's text tower cut to 23 of its 24
blocks, so its last is the penultimate); SDXL takes the penultimate block before the final LayerNorm of
both encoders, concatenated, and the second encoder's projected pooled output. Positive and negative prompts
(classifier-free guidance) are encoded in one batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models.text import TextTransformer
from clip_jax.models.transformer import LayerNorm
from clip_jax.tokenizer import EOT_TOKEN, tokenize


@dataclasses.dataclass(frozen=True)
class PromptEncoding:
    """How a pipeline reads one CLIP text encoder.

    `layer`: the block whose output is taken (Python indexing: -1 the last, -2 the penultimate; the same
    numbers as transformers' `hidden_states[layer]` for negative ones). `final_norm`: apply the encoder's
    final LayerNorm to it (with layer -1, that is `last_hidden_state`). `pad_token`: the id that pads each
    prompt after its end-of-text (the pipeline tokenizer's pad_token). `pooled`: also return the projected
    output at the end-of-text (transformers' `text_embeds`; the encoder must have a projection).
    """

    layer: int = -1
    final_norm: bool = True
    pad_token: int = EOT_TOKEN
    pooled: bool = False

    def with_clip_skip(self, clip_skip: int) -> PromptEncoding:
        """diffusers' `clip_skip`: SD 1/2 take hidden_states[-(clip_skip + 1)] through the final LayerNorm,
        SDXL hidden_states[-(clip_skip + 2)] without it (StableDiffusion[XL]Pipeline.encode_prompt)."""
        return dataclasses.replace(self, layer=self.layer - clip_skip)


# Stable Diffusion 1.x: CLIP ViT-L/14's text tower (QuickGELU), pad "<|endoftext|>", last_hidden_state.
SD1 = PromptEncoding(layer=-1, final_norm=True, pad_token=EOT_TOKEN)
# Stable Diffusion 2.x: OpenCLIP ViT-H/14's text tower without its last block, pad "!" (id 0).
SD2 = PromptEncoding(layer=-1, final_norm=True, pad_token=0)
# SDXL: hidden_states[-2] of CLIP ViT-L/14 (pad "<|endoftext|>") and of OpenCLIP bigG/14 (pad "!"),
# plus bigG's projected pooled output.
SDXL_ENCODER_1 = PromptEncoding(layer=-2, final_norm=False, pad_token=EOT_TOKEN)
SDXL_ENCODER_2 = PromptEncoding(layer=-2, final_norm=False, pad_token=0, pooled=True)


class Conditioning(NamedTuple):
    """What a diffusion UNet is conditioned on; the negative entries are None when not asked for."""

    prompt_embeds: jax.Array  # [B, L, width]
    negative_prompt_embeds: jax.Array | None
    pooled_prompt_embeds: jax.Array | None = None  # [B, embed_dim] (SDXL's add_text_embeds)
    negative_pooled_prompt_embeds: jax.Array | None = None


@functools.partial(jax.jit, static_argnums=(0, 1))
def encode_tokens(
    model: TextTransformer, encoding: PromptEncoding, params: dict, tokens: jax.Array
) -> tuple[jax.Array, jax.Array | None]:
    """(hidden states [B, L, width], projected pooled [B, embed_dim] or None) of token ids, as `encoding`
    reads them; one pass through the encoder, compiled once per model, encoding and batch shape."""
    if encoding.pooled and model.embed_dim is None:
        raise ValueError("PromptEncoding(pooled=True) needs an encoder with a text projection")
    out = model.apply({"params": params}, tokens, hidden_layers=(encoding.layer,))
    hidden = out.hidden_states[0]
    if encoding.final_norm:
        # The same LayerNorm module and params as the encoder's own ln_final.
        ln = LayerNorm(dtype=model.dtype, param_dtype=model.param_dtype, eps=model.norm_eps)
        hidden = ln.apply({"params": params["ln_final"]}, hidden)
    return hidden, out.projected if encoding.pooled else None


def prompt_tokens(
    model: TextTransformer, encoding: PromptEncoding, prompts: str | Sequence[str]
) -> np.ndarray:
    """Token ids of `prompts` [N, context_length] padded with the encoding's pad token."""
    return tokenize(prompts, model.cfg.context_length, pad_token=encoding.pad_token)


def encode_prompts(
    model: TextTransformer,
    params: dict,
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = "",
    encoding: PromptEncoding = SD1,
) -> Conditioning:
    """The conditioning of `prompts` and, for classifier-free guidance, of `negative_prompts` (one string
    for all, or one per prompt; "" is what diffusers' SD pipelines use when given none; None skips them),
    from one batch through the encoder."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negatives = _negatives(negative_prompts, len(prompts))
    tokens = prompt_tokens(model, encoding, prompts + (negatives or []))
    hidden, pooled = encode_tokens(model, encoding, params, jnp.asarray(tokens))
    n = len(prompts)
    if negatives is None:
        return Conditioning(hidden, None, pooled, None)
    return Conditioning(
        hidden[:n], hidden[n:], None if pooled is None else pooled[:n], None if pooled is None else pooled[n:]
    )


def encode_prompts_sdxl(
    encoder_1: tuple[TextTransformer, dict],
    encoder_2: tuple[TextTransformer, dict],
    prompts: str | Sequence[str],
    negative_prompts: str | Sequence[str] | None = None,
    prompts_2: str | Sequence[str] | None = None,
    negative_prompts_2: str | Sequence[str] | None = None,
    clip_skip: int = 0,
) -> Conditioning:
    """SDXL's conditioning (StableDiffusionXLPipeline.encode_prompt): the penultimate hidden states of
    both encoders concatenated on the feature axis [B, 77, width_1 + width_2], and the second encoder's
    projected pooled output. `prompts_2` (default `prompts`) go to the second encoder.

    Without negative prompts the negative conditioning is zeros, as SDXL's pipelines do by default
    (`force_zeros_for_empty_prompt`); pass negative_prompts="" to encode the empty prompt instead.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    prompts_2 = prompts if prompts_2 is None else prompts_2
    encodings = (SDXL_ENCODER_1.with_clip_skip(clip_skip), SDXL_ENCODER_2.with_clip_skip(clip_skip))
    if negative_prompts is None:
        negatives = (None, None)
    else:
        negatives = (negative_prompts, negative_prompts if negative_prompts_2 is None else negative_prompts_2)
    # The pooled output is the last block's whatever the clip_skip: diffusers takes text_embeds as is.
    first = encode_prompts(*encoder_1, prompts, negatives[0], encodings[0])
    second = encode_prompts(*encoder_2, prompts_2, negatives[1], encodings[1])
    embeds = jnp.concatenate([first.prompt_embeds, second.prompt_embeds], axis=-1)
    if negative_prompts is None:
        return Conditioning(
            embeds,
            jnp.zeros_like(embeds),
            second.pooled_prompt_embeds,
            jnp.zeros_like(second.pooled_prompt_embeds),
        )
    negative = jnp.concatenate([first.negative_prompt_embeds, second.negative_prompt_embeds], axis=-1)
    return Conditioning(embeds, negative, second.pooled_prompt_embeds, second.negative_pooled_prompt_embeds)


def _negatives(negative_prompts: str | Sequence[str] | None, n: int) -> list[str] | None:
    if negative_prompts is None:
        return None
    if isinstance(negative_prompts, str):
        return [negative_prompts] * n
    negatives = list(negative_prompts)
    if len(negatives) != n:
        raise ValueError(f"{len(negatives)} negative prompts for {n} prompts: give one, or one per prompt")
    return negatives
