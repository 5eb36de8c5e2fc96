"""`load_pretrained`: any supported checkpoint -> (CLIP module, params), with the config checked.

Supported inputs: open_clip / OpenAI state dicts (.safetensors, .bin/.pt/.pth pickles, training
checkpoints with a `state_dict` entry), OpenAI TorchScript archives, HF CLIPModel files or directories,
and directories written by `save_params`. Everything is first brought to open_clip's key names; the
named (or inferred) config then defines the exact set of keys and shapes that must be present. Every
error names the file it is about (weights or config json) and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.models.clip import CLIP, param_shapes
from clip_jax.models.config import CLIPConfig, config_diff, get_model_config
from clip_jax.models.transformer import stack_layers, unstack_layers
from clip_jax.weights import big_vision, hf, open_clip, params_io, readers
from clip_jax.weights.infer import infer_config


@dataclasses.dataclass
class OpenClipStateDict:
    """A checkpoint in open_clip's key names, with what its files say about the config."""

    state_dict: dict[str, np.ndarray]
    path: Path
    source: str  # "open_clip", "openai-torchscript" or "hf"
    # {open_clip key: key in the file} where they differ (HF), for error messages.
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    file_config: CLIPConfig | None = None


def read_open_clip_state_dict(path: str | os.PathLike) -> OpenClipStateDict:
    """Read any supported weights file (or model directory) into open_clip's key names."""
    if big_vision.is_big_vision_file(path):
        sd, origin = big_vision.read_big_vision(path)
        return OpenClipStateDict(sd, Path(path), "big_vision", origin)
    ckpt = readers.read_checkpoint(path)
    sd = ckpt.state_dict
    if hf.is_hf_state_dict(sd):
        with _naming(ckpt.path):
            sd, origin = hf.hf_to_open_clip(sd)
        with _naming(ckpt.path.parent / "config.json"):
            cfg = hf.config_from_hf(ckpt.hf_config) if ckpt.hf_config else None
        return OpenClipStateDict(sd, ckpt.path, "hf", origin, cfg)
    # open_clip's CustomTextCLIP keeps the text tower under `text.`; CLIP has it at the top level.
    if "text_projection" not in sd and any(k.startswith("text.") for k in sd):
        sd = {k[len("text.") :] if k.startswith("text.") else k: v for k, v in sd.items()}
    origin: dict[str, str] = {}
    if open_clip.is_timm_siglip_state_dict(sd):  # SigLIP with timm's image trunk
        sd, origin = open_clip.timm_siglip_to_open_clip(sd)
    with _naming(ckpt.path.parent / "open_clip_config.json"):
        cfg = CLIPConfig.from_open_clip(ckpt.open_clip_config) if ckpt.open_clip_config else None
    return OpenClipStateDict(
        sd, ckpt.path, "openai-torchscript" if ckpt.torchscript else "open_clip", origin, cfg
    )


def resolve_config(
    name: str | CLIPConfig | None, ckpt: OpenClipStateDict, quick_gelu: bool | None = None
) -> CLIPConfig:
    """The config to build: the named one, else the checkpoint's own json, else inferred from shapes."""
    if isinstance(name, CLIPConfig):
        cfg = name
    elif name is not None:
        cfg = get_model_config(name)
        if ckpt.source == "openai-torchscript" and not cfg.quick_gelu and quick_gelu is None:
            warnings.warn(
                f"{ckpt.path} is an OpenAI TorchScript file (trained with QuickGELU) but model {name!r} "
                "uses GELU; did you mean the '-quickgelu' variant?",
                stacklevel=3,
            )
    elif ckpt.file_config is not None:
        cfg = ckpt.file_config
    else:
        if quick_gelu is None and _has_siglip_text_head(ckpt.state_dict):
            quick_gelu = False  # SigLIP's weights were trained with (tanh) GELU, the named configs' own
        if quick_gelu is None:
            if ckpt.source != "openai-torchscript":
                raise ValueError(
                    f"cannot tell from {ckpt.path} whether the model uses QuickGELU or GELU: pass a model "
                    "name (e.g. 'ViT-B-32-quickgelu' for OpenAI's weights, 'ViT-B-32' for open_clip's own) "
                    "or quick_gelu=True/False (--quick-gelu on the command line)"
                )
            quick_gelu = True  # OpenAI's released weights were all trained with QuickGELU
        with _naming(ckpt.path):
            cfg = infer_config(ckpt.state_dict, quick_gelu=quick_gelu)
    if quick_gelu is not None:
        cfg = cfg.replace(quick_gelu=quick_gelu)
    return cfg


def _has_siglip_text_head(state_dict: dict) -> bool:
    """True for a SigLIP checkpoint (a MAP-pooled image tower beside a biased text head): its activation
    is GELU, never OpenAI's QuickGELU, so only the shapes remain to be matched."""
    return "visual.attn_pool.probe" in state_dict and "text_projection.bias" in state_dict


def convert_state_dict(
    ckpt: OpenClipStateDict, cfg: CLIPConfig, what: str = "the model config", param_dtype: Any = np.float32
) -> dict:
    """Check `ckpt` against `cfg` (ValueError naming each bad key) and return per-layer numpy params."""
    shapes = param_shapes(cfg, param_dtype)
    open_clip.check_state_dict(ckpt.state_dict, shapes, what, ckpt.origin, source=f"checkpoint {ckpt.path}")
    return open_clip.state_dict_to_params(ckpt.state_dict, shapes, dtype=param_dtype)


def load_params_checked(
    path: str | os.PathLike,
    name: str | CLIPConfig | None = None,
    quick_gelu: bool | None = None,
    param_dtype: Any = np.float32,
) -> tuple[CLIPConfig, dict]:
    """(cfg, per-layer params) from any supported input, verified against the named config if any."""
    from clip_jax.weights.pretrained import resolve_weights

    path = resolve_weights(name, path)  # a pretrained tag (`--weights openai`) -> its file in the cache
    if isinstance(name, str):
        what = f"model {name!r}"
    else:
        what = "the given config" if name is not None else "the config read or inferred from the checkpoint"
    from clip_jax.weights import training_run

    if training_run.is_training_run(path):  # a trainer's workdir: its model is in its config.json
        cfg, params, _ = training_run.load_training_run(path, name, quick_gelu)
        return cfg, _cast(params, param_dtype)
    if params_io.is_params_dir(path):
        stored_cfg, params = params_io.load_params(path)
        stored = stored_cfg if quick_gelu is None else stored_cfg.replace(quick_gelu=quick_gelu)
        cfg = (
            stored
            if name is None
            else resolve_config(name, OpenClipStateDict({}, Path(path), "orbax"), quick_gelu)
        )
        found = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in open_clip.expected_shapes(params).items()}
        open_clip.check_state_dict(found, param_shapes(cfg), what, source=f"checkpoint {path}")
        # Heads and the activation leave no trace in shapes; the saved config knows them.
        diff = config_diff(cfg, stored)
        if diff:
            raise ValueError(f"{what} differs from the config saved in {path} in (given, saved): {diff}")
        return cfg, _cast(params, param_dtype)
    ckpt = read_open_clip_state_dict(path)
    cfg = resolve_config(name, ckpt, quick_gelu)
    return cfg, convert_state_dict(ckpt, cfg, what, param_dtype)


def load_pretrained(
    name: str | CLIPConfig | None,
    path: str | os.PathLike,
    *,
    quick_gelu: bool | None = None,
    **model_kwargs: Any,
) -> tuple[CLIP, dict]:
    """Build `CLIP(cfg, **model_kwargs)` and its params from the weights at `path`.

    `name` is a model name ('ViT-B-32-quickgelu'), a CLIPConfig, or None to take the config from the
    checkpoint (its json, else its shapes, which identify only the named configs since the heads leave no
    trace in the weights; `quick_gelu` must then be given for open_clip files, as the activation leaves
    none either). A mismatch between config and checkpoint (wrong model,
    missing, unexpected or mis-shaped key) is a ValueError that names the key and both shapes. With
    `scan=True` in `model_kwargs` the layers are stacked for the scanned model.
    """
    param_dtype = model_kwargs.get("param_dtype", np.float32)
    cfg, params = load_params_checked(path, name, quick_gelu, param_dtype)
    if model_kwargs.get("scan", False):
        params = stack_layers(params)
    return CLIP(cfg, **model_kwargs), jax.device_put(params)


def export_open_clip(params: dict, cfg: CLIPConfig, path: str | os.PathLike) -> Path:
    """Write `params` as an open_clip-format `.safetensors` that `open_clip`'s model.load_state_dict accepts,
    and the model's config beside it as `open_clip_config.json` ({"model_cfg": ...}, open_clip's layout),
    so that open_clip (`open_clip.CLIP(**cfg["model_cfg"])`) and clip_jax rebuild the same model.

    The config describes every weights file of its folder, so it is written only where it cannot change
    how another file is read: not into a folder that holds other weights files, and an existing config
    is never overwritten with a different one (a warning says so; the weights are written either way).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    params = jax.tree.map(np.asarray, unstack_layers(params))
    open_clip.check_state_dict(
        {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in open_clip.expected_shapes(params).items()},
        param_shapes(cfg),
        "the given config",
        source="the params tree to export",
    )
    model_cfg = cfg.to_open_clip()  # before writing: a config open_clip cannot build (SigLIP) raises
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_file(open_clip.params_to_state_dict(params), str(path), metadata={"format": "pt"})
    except SafetensorError as e:  # its message names the temporary file it writes first, not `path`
        raise OSError(f"cannot write {path}: {e}") from e
    _write_open_clip_config(path, {"model_cfg": model_cfg})
    return path


def _write_open_clip_config(weights: Path, config: dict) -> None:
    target = weights.parent / "open_clip_config.json"
    others = [p.name for p in weights.parent.iterdir() if p.suffix in WEIGHT_SUFFIXES and p != weights]
    if target.exists():
        if json.loads(target.read_text()) != config:
            warnings.warn(f"{target} exists and describes another model: left as it is", stacklevel=3)
        return
    if others:
        warnings.warn(
            f"{weights.parent} holds other weights files {others}: no open_clip_config.json written for "
            f"{weights.name} (it would apply to them too)",
            stacklevel=3,
        )
        return
    target.write_text(json.dumps(config, indent=2) + "\n")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Prefix the message of a ValueError raised inside with the file it is about."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _cast(params: dict, dtype: Any) -> dict:
    return jax.tree.map(lambda a: a if a.dtype == dtype else a.astype(dtype), params)
