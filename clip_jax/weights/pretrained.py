"""Pretrained tags as weights: `--model ViT-B-32 --weights laion2b_s34b_b79k` reads a local cache file.

open_clip names published weights by (model, tag) and downloads them; clip_jax downloads nothing, so a
tag resolves to `$CLIP_JAX_CACHE/<model>/<tag>/open_clip_model.safetensors` (default cache
~/.cache/clip_jax), the file open_clip fetches from the tag's Hugging Face repo. When it is missing the
error names the exact path to put it at and the URL it comes from. OpenAI's tags (`openai`) also take
OpenAI's own file there, `<model>.pt`. The table (clip_jax/assets/pretrained_tags.json) is generated
from open_clip's by scripts/pretrained_tags.py.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

CACHE_ENV = "CLIP_JAX_CACHE"
HF_FILE = "open_clip_model.safetensors"
QUICK_GELU = "-quickgelu"


@functools.cache
def _table() -> dict:
    return json.loads((Path(__file__).resolve().parents[1] / "assets" / "pretrained_tags.json").read_text())


def cache_root() -> Path:
    """$CLIP_JAX_CACHE, else ~/.cache/clip_jax."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clip_jax")


def pretrained_tags(model: str) -> dict[str, str]:
    """The tags whose weights load into the model of this name -> their HF repo: a GELU name's own
    tags, a -quickgelu name's own and its base model's QuickGELU-trained ones."""
    tags, quick = _table()["tags"], set(_table()["quick_gelu"])
    base = model.removesuffix(QUICK_GELU)
    if model == base:
        return {t: r for t, r in tags.get(model, {}).items() if f"{model}/{t}" not in quick}
    return {**{t: r for t, r in tags.get(base, {}).items() if f"{base}/{t}" in quick}, **tags.get(model, {})}


def _known_tags(model: str) -> dict[str, str]:
    """Every tag of the model's name or its base name, usable or not (to say why one is not)."""
    tags = _table()["tags"]
    return {**tags.get(model.removesuffix(QUICK_GELU), {}), **tags.get(model, {})}


def is_pretrained_tag(model: object, weights: object) -> bool:
    """True when `weights` is a tag of the named `model` and not a path that exists."""
    return (
        isinstance(model, str)
        and isinstance(weights, str)
        and weights in _known_tags(model)
        and not os.path.exists(weights)
    )


def resolve_weights(model: object, weights: str | os.PathLike) -> str | os.PathLike:
    """`weights` itself, or for a pretrained tag of `model` its file in the cache (FileNotFoundError with
    the path to put it at when it is missing; ValueError for a QuickGELU tag on a GELU model name)."""
    if not is_pretrained_tag(model, weights):
        return weights
    assert isinstance(model, str) and isinstance(weights, str)
    tag, base = weights, model.removesuffix(QUICK_GELU)
    owner = model if tag in _table()["tags"].get(model, {}) else base
    if f"{owner}/{tag}" in _table()["quick_gelu"] and not model.endswith(QUICK_GELU):
        raise ValueError(
            f"--weights {tag} of {base} was trained with QuickGELU: use --model {base}{QUICK_GELU}"
        )
    folder = cache_root() / owner / tag
    names = [HF_FILE] + ([f"{base}.pt"] if tag == "openai" else [])
    for name in names:
        if (folder / name).is_file():
            return str(folder / name)
    repo = _known_tags(model)[tag]
    raise FileNotFoundError(
        f"pretrained weights {owner}/{tag} are not in the cache: put {folder / HF_FILE} there "
        f"(https://huggingface.co/{repo}/resolve/main/{HF_FILE}; clip_jax downloads nothing) "
        f"or set {CACHE_ENV} to the folder holding {owner}/{tag}/"
    )
