"""What a model's inputs are made with: its eval image transform and its tokenizer.

Both belong to the weights, not to the evaluation: a SigLIP checkpoint was trained on sentencepiece ids
and on images resized whole to the square with mean = std = 0.5, a CLIP checkpoint on CLIP's BPE and
OpenAI's resize-and-crop. `model_inputs` reads them from a checkpoint where it has them (a HF SigLIP
directory's spiece.model and preprocessor_config.json) and otherwise takes the config family's defaults,
so that prediction and every evaluation (zero-shot, linear probe, robustness, retrieval) feed a model
what it was trained on without being told.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clip_jax.models.config import CLIPConfig
from clip_jax.preprocess import OPENAI_TRANSFORM, SIGLIP_TRANSFORM, EvalTransform, read_hf_transform

Tokenizer = Callable[[Sequence[str]], np.ndarray]

FAMILY_TRANSFORMS = {"clip": OPENAI_TRANSFORM, "siglip": SIGLIP_TRANSFORM}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """transform: the eval image transform; tokenizer: texts -> int32 ids [N, context_length], or None for
    CLIP's BPE (the only tokenizer that needs no file from the checkpoint)."""

    transform: EvalTransform = OPENAI_TRANSFORM
    tokenizer: Tokenizer | None = None

    def text_tokenizer(self, cfg: CLIPConfig) -> Tokenizer:
        """The tokenizer for `cfg`'s text tower; a ValueError saying what is missing for a SigLIP tower
        without its checkpoint's vocabulary (CLIP's BPE ids would be read as other words)."""
        if self.tokenizer is not None:
            return self.tokenizer
        if cfg.family != "clip":
            raise ValueError(
                f"this model's text tower is {cfg.family}'s (text.pool_type={cfg.text.pool_type!r}) and reads "
                "its own vocabulary, not CLIP's BPE: load it from a checkpoint directory holding spiece.model "
                "(--weights DIR), or pass its tokenizer (clip_jax.siglip_tokenizer.find_siglip_tokenizer)"
            )
        from clip_jax.tokenizer import tokenize

        context_length = cfg.text.context_length
        return lambda texts: tokenize(list(texts), context_length=context_length)


def model_inputs(cfg: CLIPConfig, weights: str | os.PathLike | None = None) -> ModelInputs:
    """The inputs of a model of `cfg` whose weights are at `weights` (a file or directory, or None).

    A SigLIP model takes its tokenizer from the checkpoint's spiece.model and its transform from the
    checkpoint's preprocessor_config.json, when they are there; everything else is the family's default
    (`FAMILY_TRANSFORMS`). CLIP models always get OpenAI's transform, whatever a HF directory's
    preprocessor_config.json says: it describes OpenAI's transform as HF implements it (half-way crop
    offsets rounded down, not to even), and the weights were trained on OpenAI's.
    """
    transform = FAMILY_TRANSFORMS[cfg.family]
    tokenizer = None
    if cfg.family == "siglip" and weights is not None:
        from clip_jax.siglip_tokenizer import find_siglip_tokenizer

        path = Path(weights)
        directory = path if path.is_dir() else path.parent
        transform = read_hf_transform(directory, cfg.vision.image_size) or transform
        tokenizer = find_siglip_tokenizer(directory, cfg.text.context_length)
    return ModelInputs(transform, tokenizer)
