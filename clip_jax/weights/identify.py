"""Which released model a weights file holds, told from its contents (not its name), for result records."""

from __future__ import annotations

import os
from pathlib import Path

from clip_jax.models.config import get_model_config
from clip_jax.weights import infer, load, open_clip, readers

# OpenAI's released CLIP models, as named configs.
OPENAI_MODELS = (
    "RN50-quickgelu",
    "RN101-quickgelu",
    "RN50x4-quickgelu",
    "RN50x16-quickgelu",
    "RN50x64-quickgelu",
    "ViT-B-32-quickgelu",
    "ViT-B-16-quickgelu",
    "ViT-L-14-quickgelu",
    "ViT-L-14-336-quickgelu",
)


def openai_model_name(path: str | os.PathLike) -> str | None:
    """The named config of the OpenAI CLIP model a TorchScript archive holds, else None.

    The archive is OpenAI's when it has the three int entries OpenAI's archives carry
    (`input_resolution`, `context_length`, `vocab_size`, with that model's values) and exactly the keys
    and shapes of one of `OPENAI_MODELS`. Other TorchScript files, and exports of other models, are not.
    (The weights' values are not checked: a re-saved or fine-tuned copy of OpenAI's file counts too.)
    """
    if not Path(path).is_file() or not readers.is_torchscript(path):
        return None
    sd = readers.strip_wrappers(readers.read_torchscript_entries(path))
    if any(k not in sd or sd[k].size != 1 for k in readers.TORCHSCRIPT_EXTRAS):
        return None
    extras = {k: int(sd.pop(k).reshape(())) for k in readers.TORCHSCRIPT_EXTRAS}
    try:
        signature = infer._signature_of(sd)
    except (ValueError, IndexError):  # a key the signature reads is missing or of another rank: no CLIP
        return None
    for name in OPENAI_MODELS:
        cfg = get_model_config(name)
        want = {"input_resolution": cfg.vision.image_size, "context_length": cfg.text.context_length}
        want["vocab_size"] = cfg.text.vocab_size
        if extras != want or infer.shape_signature(cfg) != signature:
            continue
        try:
            open_clip.check_state_dict(sd, load.param_shapes(cfg), f"model {name!r}")
        except ValueError:
            return None
        return name
    return None


def pretrained_tag(path: str | os.PathLike) -> str:
    """'openai' for a TorchScript archive of one of OpenAI's released CLIP models (so that result tables
    match the paper's names), else the file's or folder's stem."""
    path = Path(path)
    return "openai" if openai_model_name(path) is not None else path.stem
