"""Causal text transformer with OpenAI CLIP's layout, pooled at the end-of-text token; with TextConfig's
switches SigLIP's (no causal mask, pooled at the last position, projection with bias).

Without a projection (`embed_dim=None`) it is transformers' `CLIPTextModel`, the text encoder of Stable
Diffusion 1 and 2; with one, `CLIPTextModelWithProjection` (SDXL's second encoder) or a CLIP's text tower.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import TextConfig
from clip_jax.models.transformer import LN_EPS, LayerNorm, Transformer, _p, take_rows


class TextOutputs(NamedTuple):
    """Everything a text encoder's one pass gives, as transformers' CLIPTextModel(WithProjection) names it."""

    last_hidden_state: jax.Array  # [B, L, width], the last block's output after ln_final
    pooled: jax.Array  # [B, width], last_hidden_state at the EOT (HF's pooler_output)
    projected: jax.Array | None  # [B, embed_dim], pooled @ text_projection (HF's text_embeds); None without
    hidden_states: tuple[jax.Array, ...]  # [B, L, width] per requested block, before ln_final


class TextTransformer(nn.Module):
    cfg: TextConfig
    embed_dim: int | None  # None: no text_projection (transformers' CLIPTextModel)
    quick_gelu: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan: bool = False
    remat_policy: str = "none"
    attention_impl: str | None = None
    gelu_approximate: bool = False
    norm_eps: float = LN_EPS

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        hidden_layer: int | None = None,
        *,
        hidden_layers: tuple[int, ...] | None = None,
    ) -> jax.Array | TextOutputs:
        """tokens: int [B, L]. Returns the projected EOT (or, pool_type "last", last-position) features
        [B, embed_dim] (without a projection, the pooled [B, width]).

        With `hidden_layer=i`, returns instead the per-token hidden states [B, L, width] after block i
        (Python indexing, so -2 is the penultimate block), before ln_final.

        With `hidden_layers` (a tuple of block indices, possibly empty), returns `TextOutputs` from one
        pass: what a diffusion model takes from a CLIP text encoder (`clip_jax.conditioning`).
        """
        if hidden_layer is not None and hidden_layers is not None:
            raise ValueError("hidden_layer and hidden_layers are exclusive: put the layer in hidden_layers")
        cfg = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Embed(
            cfg.vocab_size,
            cfg.width,
            embedding_init=_p(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embedding",
            **kw,
        )(tokens)
        pos = self.param(
            "positional_embedding",
            _p(nn.initializers.normal(0.01), (None, "embed")),
            (cfg.context_length, cfg.width),
            self.param_dtype,
        )
        if tokens.shape[1] > cfg.context_length:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {cfg.context_length}")
        x = x + pos[: tokens.shape[1]].astype(self.dtype)
        if cfg.pool_type == "argmax":
            # The end-of-text token has the largest id in the vocabulary, so argmax finds it.
            eot = jnp.argmax(tokens, axis=-1)
        else:
            eot = jnp.full(tokens.shape[:1], tokens.shape[1] - 1, jnp.int32)
        transformer = Transformer(
            cfg.layers,
            cfg.heads,
            cfg.mlp_width,
            quick_gelu=self.quick_gelu,
            gelu_approximate=self.gelu_approximate,
            norm_eps=self.norm_eps,
            causal=not cfg.no_causal_mask,
            scan=self.scan,
            remat_policy=self.remat_policy,
            attention_impl=self.attention_impl,
            name="transformer",
            **kw,
        )
        ln_final = LayerNorm(name="ln_final", eps=self.norm_eps, **kw)
        if hidden_layers is not None:
            *hidden, last = transformer(x, return_layer=(*hidden_layers, -1))
            last_hidden_state = ln_final(last)
            pooled = take_rows(last_hidden_state, eot)[:, 0]
            return TextOutputs(last_hidden_state, pooled, self._project(pooled), tuple(hidden))
        x = transformer(x, return_layer=hidden_layer, pool_rows=None if hidden_layer is not None else eot)
        if hidden_layer is not None:
            return x
        pooled = ln_final(x)
        return pooled if self.embed_dim is None else self._project(pooled)

    def _project(self, pooled: jax.Array) -> jax.Array | None:
        """pooled [B, width] -> [B, embed_dim] through text_projection; None for a tower without one."""
        cfg = self.cfg
        if self.embed_dim is None:
            return None
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(cfg.width**-0.5)
        if cfg.proj_bias:
            # A Linear with bias, as open_clip's proj_bias tower (and SigLIP's head) has it.
            dense = nn.Dense(
                self.embed_dim,
                kernel_init=_p(init, ("embed", "joint")),
                bias_init=_p(nn.initializers.zeros, ("joint",)),
                name="text_projection",
                **kw,
            )
            return dense(pooled)
        proj = self.param(
            "text_projection", _p(init, ("embed", "joint")), (cfg.width, self.embed_dim), self.param_dtype
        )
        return pooled @ proj.astype(self.dtype)
