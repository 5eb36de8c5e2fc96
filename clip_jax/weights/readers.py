"""Read PyTorch-world checkpoints into a flat {name: numpy array} state dict.

Formats: `.safetensors` (read with numpy, torch not needed), `torch.save` pickles (`.bin`, `.pt`, `.pth`,
read with `torch.load(weights_only=True)`) and OpenAI's TorchScript archives (`torch.jit.load`). The last
two need torch; without it they fail with an error that says so. Wrappers that training scripts add
(`{'state_dict': ...}`, the `module.` prefix of DistributedDataParallel) are removed here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# Entries of OpenAI's TorchScript state dicts that are hyperparameters, not weights.
TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")

# File names looked for inside a directory, best first (open_clip's and HF's conventions).
PREFERRED_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.pth",
    "model.pt",
)


@dataclasses.dataclass
class Checkpoint:
    """A state dict as numpy arrays plus what the file itself says about the model."""

    state_dict: dict[str, np.ndarray]
    path: Path
    torchscript: bool = False
    # Contents of a HF `config.json` / open_clip `open_clip_config.json` found beside the weights.
    hf_config: dict[str, Any] | None = None
    open_clip_config: dict[str, Any] | None = None


def find_weights_file(directory: str | os.PathLike) -> Path:
    """The weights file of a HF or open_clip model directory."""
    directory = Path(directory)
    for name in PREFERRED_FILES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in directory.glob(ext))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"no unique weights file in {directory}: expected one of {list(PREFERRED_FILES)}, "
        f"found {[p.name for p in candidates]}"
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read the weights at `path` (a file or a model directory) and any config json beside them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        path = find_weights_file(path)
    torchscript = False
    if path.suffix == ".safetensors":
        state_dict = read_safetensors(path)
    elif is_torchscript(path):
        state_dict, torchscript = read_torchscript(path), True
    else:
        state_dict = read_torch_pickle(path)
    ckpt = Checkpoint(strip_wrappers(state_dict), path, torchscript=torchscript)
    ckpt.hf_config = _read_json(path.parent / "config.json")
    oc = _read_json(path.parent / "open_clip_config.json")
    ckpt.open_clip_config = oc.get("model_cfg", oc) if oc else None
    return ckpt


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with serialized code; plain torch.save zips only hold data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_torch_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    torch = _import_torch(path)
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def read_torchscript(path: str | os.PathLike) -> dict[str, np.ndarray]:
    torch = _import_torch(path)
    module = torch.jit.load(str(path), map_location="cpu")
    return {k: _to_numpy(v) for k, v in module.state_dict().items() if k not in TORCHSCRIPT_EXTRAS}


def strip_wrappers(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove the `module.` prefix that DistributedDataParallel adds to every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _to_numpy(t: Any) -> np.ndarray:
    t = t.detach().cpu()
    # numpy has no bfloat16; widening to float32 is exact.
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.numpy()


def _import_torch(path: str | os.PathLike) -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch (it is a torch pickle or TorchScript file); install torch, "
            "or convert the checkpoint to .safetensors where torch is available"
        ) from None
    return torch


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
