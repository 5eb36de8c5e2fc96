"""The two sides of every CPU comparison: one random open_clip model, and its weights as clip_jax params.

Both sides compute the same function: the weights of `open_clip.create_model(name, pretrained=None)`
go through the project's converter (`clip_jax.weights.load.convert_state_dict`), so a benchmark also
proves that it compares like with like (its outputs are asserted to agree before anything is timed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax.models import CLIPConfig
from clip_jax.models.config import MODEL_CONFIGS
from clip_jax.train.random_batches import RandomBatches
from clip_jax.weights.load import OpenClipStateDict, convert_state_dict


@dataclasses.dataclass
class Pair:
    """One open_clip model and the same weights as clip_jax params."""

    name: str
    cfg: CLIPConfig
    torch_model: Any  # open_clip.model.CLIP, eval mode
    params: dict  # per-layer numpy params converted from torch_model's state dict


def model_config(name: str) -> CLIPConfig:
    """clip_jax's config of the open_clip model `name` (any open_clip ViT, through the translator)."""
    import open_clip

    open_clip_cfg = open_clip.get_model_config(name)
    if open_clip_cfg is None:
        raise ValueError(f"{name!r} is not an open_clip model config (open_clip.list_models() has them)")
    return MODEL_CONFIGS.get(name) or CLIPConfig.from_open_clip(open_clip_cfg)


def make_pair(name: str, seed: int = 0) -> Pair:
    """A random open_clip model and the same weights as clip_jax params (via the project's converter)."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    state_dict = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    cfg = model_config(name)
    ckpt = OpenClipStateDict(state_dict, Path(f"<random open_clip {name}>"), "open_clip")
    params = convert_state_dict(ckpt, cfg, what=f"model {name!r}")
    return Pair(name, cfg, model, params)


def random_batch(cfg: CLIPConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normal images [B, H, W, 3] and token ids with SOT ... EOT and zero padding."""
    it = RandomBatches(
        global_batch_size=batch,
        image_size=cfg.vision.image_size,
        context_length=cfg.text.context_length,
        seed=seed,
    )
    return next(it)


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The same batch as torch tensors in open_clip's layout (images channels-first, int64 ids)."""
    import torch

    return {
        "image": torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))),
        "text": torch.from_numpy(batch["text"].astype(np.int64)),
    }
