"""What a model's inputs are made with: its eval image transform and its tokenizer.

Both belong to the weights, not to the evaluation: a SigLIP checkpoint was trained on sentencepiece ids
and on images resized whole to the square with mean = std = 0.5, a CLIP checkpoint on CLIP's BPE and
OpenAI's resize-and-crop. `model_inputs` reads them from a checkpoint where it has them (a HF SigLIP
directory's spiece.model and preprocessor_config.json) and otherwise takes the config family's defaults,
so that prediction and every evaluation (zero-shot, linear probe, robustness, retrieval) feed a model
what it was trained on without being told. Training asks here too (`train_inputs`, from config.tokenizer
or config.init_from): its tf.data pipeline tokenizes captions with the model's tokenizer, and never
knows which family that is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clip_jax.models.config import CLIPConfig
from clip_jax.preprocess import OPENAI_TRANSFORM, SIGLIP_TRANSFORM, EvalTransform

Tokenizer = Callable[[Sequence[str]], np.ndarray]

FAMILY_TRANSFORMS = {"clip": OPENAI_TRANSFORM, "siglip": SIGLIP_TRANSFORM}
# The zero-shot prompts each family's authors evaluate with (clip_jax.eval.metadata.PROMPT_STYLES): OpenAI's
# 80 ImageNet templates, or big_vision's 81 (the same and "{}") canonicalised, as its evaluators do.
FAMILY_PROMPTS = {"clip": "openai", "siglip": "big_vision"}


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """transform: the eval image transform; tokenizer: texts -> int32 ids [N, context_length], or None for
    CLIP's BPE (the only tokenizer that needs no file from the checkpoint); prompts: the zero-shot prompt
    style ("openai" or "big_vision", `clip_jax.eval.metadata.PROMPT_STYLES`)."""

    transform: EvalTransform = OPENAI_TRANSFORM
    tokenizer: Tokenizer | None = None
    prompts: str = "openai"

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


def tokenizer_source(cfg: CLIPConfig, tokenizer: str = "", init_from: str = "") -> Path | None:
    """Where a training run of `cfg` reads its tokenizer (None: CLIP's BPE, shipped with clip_jax);
    a ValueError naming the config field when there is none or it does not hold one. Reads no file, so
    that a config (or every run of a sweep) validates fast.

    `tokenizer` (config.tokenizer) is a sentencepiece .model file (SigLIP's; named tokenizer.model,
    SigLIP 2's Gemma one) or a checkpoint directory holding the family's vocabulary (spiece.model or
    tokenizer.model); empty, a non-CLIP tower takes it from `init_from`'s directory (config.init_from), as
    its evaluations do from --weights.
    """
    if cfg.family == "clip":
        if tokenizer:
            raise ValueError(
                f"config.tokenizer={tokenizer!r}: a clip text tower reads CLIP's BPE ids (it pools at the "
                "largest id, EOT); leave config.tokenizer empty"
            )
        return None
    field, source = ("tokenizer", tokenizer) if tokenizer else ("init_from", init_from)
    if not source:
        raise ValueError(
            f"config.tokenizer is empty: a {cfg.family} text tower reads its own sentencepiece vocabulary, "
            "not CLIP's BPE; set config.tokenizer to its .model file or a checkpoint directory holding "
            "spiece.model (or config.init_from to such a checkpoint)"
        )
    from clip_jax.siglip_tokenizer import GEMMA_VOCAB_FILE, VOCAB_FILE

    path = Path(source)
    directory = path if path.is_dir() else path.parent
    if field == "tokenizer" and path.is_file():
        return path
    if (directory / VOCAB_FILE).is_file() or (directory / GEMMA_VOCAB_FILE).is_file():
        return directory
    missing = "does not exist" if not path.exists() else f"holds no {VOCAB_FILE} or {GEMMA_VOCAB_FILE}"
    raise ValueError(
        f"config.{field}={source!r} {missing}: the {cfg.family} text tower needs its sentencepiece "
        "vocabulary; set config.tokenizer to its .model file or a directory holding spiece.model"
    )


def train_inputs(cfg: CLIPConfig, tokenizer: str = "", init_from: str = "") -> ModelInputs:
    """The inputs a training run feeds `cfg` and evaluates it with: the tokenizer of `tokenizer_source`
    (its config fields), the family's eval transform and zero-shot prompts (as `model_inputs`)."""
    source = tokenizer_source(cfg, tokenizer, init_from)
    if source is None:
        return ModelInputs(prompts=FAMILY_PROMPTS[cfg.family])
    transform = FAMILY_TRANSFORMS[cfg.family]
    if source.is_file():
        from clip_jax.siglip_tokenizer import GEMMA_VOCAB_FILE, GemmaSiglipTokenizer, SiglipTokenizer

        cls = GemmaSiglipTokenizer if source.name == GEMMA_VOCAB_FILE else SiglipTokenizer
        return ModelInputs(transform, cls(source, cfg.text.context_length), FAMILY_PROMPTS[cfg.family])
    from clip_jax.siglip_tokenizer import find_siglip_tokenizer

    found = find_siglip_tokenizer(source, cfg.text.context_length)
    if found is None:
        where = "config.tokenizer" if tokenizer else "config.init_from"
        raise ValueError(f"{where}: no sentencepiece vocabulary in {source}")
    return ModelInputs(transform, found, FAMILY_PROMPTS[cfg.family])


def model_inputs(cfg: CLIPConfig, weights: str | os.PathLike | None = None) -> ModelInputs:
    """The inputs of a model of `cfg` whose weights are at `weights` (a file or directory, or None).

    A SigLIP model takes its tokenizer from the checkpoint's spiece.model (or tokenizer.model) when it is
    there, a clip_jax training run the one its config.json names (`train_inputs`); the transform and the zero-shot prompts are the family's (`FAMILY_TRANSFORMS`,
    `FAMILY_PROMPTS`): those its published numbers were made with. A HF directory's
    preprocessor_config.json is not followed: for CLIP it describes OpenAI's transform as HF implements it
    (half-way crop offsets rounded down, not to even), for SigLIP HF's PIL bicubic approximation of
    big_vision's bilinear resize (docs/preprocessing.md measures the gap); the user may choose it
    (`clip_jax.preprocess.NAMED_TRANSFORMS`, --transform siglip-hf-pil).
    """
    transform = FAMILY_TRANSFORMS[cfg.family]
    tokenizer = None
    if weights is not None:
        from clip_jax.weights import training_run

        if training_run.is_training_run(weights):  # what its training pipeline fed it (config.tokenizer)
            config = training_run.run_config(weights) or {}
            return train_inputs(cfg, config.get("tokenizer", ""), config.get("init_from", ""))
    if cfg.family == "siglip" and weights is not None:
        from clip_jax.siglip_tokenizer import find_siglip_tokenizer

        path = Path(weights)
        directory = path if path.is_dir() else path.parent
        tokenizer = find_siglip_tokenizer(directory, cfg.text.context_length)
    return ModelInputs(transform, tokenizer, FAMILY_PROMPTS[cfg.family])
