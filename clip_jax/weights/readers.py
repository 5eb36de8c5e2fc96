"""Read PyTorch-world checkpoints into a flat {name: numpy array} state dict.

Formats: `.safetensors` (read with numpy, torch not needed), `torch.save` pickles (`.bin`, `.pt`, `.pth`,
read with `torch.load(weights_only=True)`) and OpenAI's TorchScript archives (`torch.jit.load`). The last
two need torch; without it they fail with an error that says so. Wrappers that training scripts add
(`{'state_dict': ...}`, the `module.` prefix of DistributedDataParallel) are removed here.

A file that cannot be read (truncated, corrupt, or of another format than its name says) is a
`ValueError` that names the file and what is wrong with it, not the reading library's bare message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax.cli_errors import UserError

# Entries of OpenAI's TorchScript state dicts that are hyperparameters, not weights.
TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


# safetensors refuses headers above 100 MB; a larger length field means the file is something else.
_MAX_SAFETENSORS_HEADER = 100_000_000

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
    """All tensors of a `.safetensors` file; a truncated or non-safetensors file is a ValueError naming it."""
    from safetensors.numpy import load_file

    _check_safetensors(Path(path))
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError, ValueError)
        raise ValueError(f"cannot read {path}: corrupt safetensors file ({e})") from None


def _check_safetensors(path: Path) -> None:
    """Raise ValueError if the file is not a whole safetensors file: its header gives every tensor's byte
    range, so a cut-off file is told apart from one of another format without reading the data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_SAFETENSORS_HEADER or f.read(1) != b"{":
            hint = (
                "; name a torch checkpoint .bin, .pt or .pth" if _file_kind(path) in ("zip", "pickle") else ""
            )
            raise ValueError(f"{path} is not a safetensors file: {_what_file_is(path)}{hint}")
        if 8 + n > size:
            raise ValueError(
                f"{path} is truncated: {size} bytes, but its {n}-byte header alone needs {8 + n}"
            )
        f.seek(8)
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path} is corrupt: its safetensors header is not valid ({e})") from None
    if 8 + n + end > size:
        raise ValueError(
            f"{path} is truncated: {size} bytes, but its header describes {8 + n + end} bytes "
            f"({len(header) - ('__metadata__' in header)} tensors)"
        )


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with serialized code; plain torch.save zips only hold data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_torch_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save` file (`weights_only=True`: the file's pickle cannot run code)."""
    torch = _import_torch(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, OSError...
        raise ValueError(_unreadable(path, "torch.load(weights_only=True)", e)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def read_torchscript(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The weights of a TorchScript archive, without OpenAI's hyperparameter entries."""
    return {k: v for k, v in read_torchscript_entries(path).items() if k not in TORCHSCRIPT_EXTRAS}


def read_torchscript_entries(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every entry of a TorchScript archive's state dict, OpenAI's hyperparameter entries included."""
    torch = _import_torch(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ValueError(_unreadable(path, "torch.jit.load", e)) from None
    return {k: _to_numpy(v) for k, v in module.state_dict().items()}


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


class TorchMissing(ImportError, UserError):
    """torch is needed for this file and not installed: the user's to fix, so a command-line tool
    reports it in one line (`clip_jax.cli_errors`); still an ImportError for code that catches those."""


def _import_torch(path: str | os.PathLike) -> Any:
    try:
        import torch
    except ImportError:
        raise TorchMissing(
            f"reading {path} needs PyTorch (it is a torch pickle or TorchScript file); install torch, "
            "or convert the checkpoint to .safetensors where torch is available"
        ) from None
    return torch


def _unreadable(path: str | os.PathLike, reader: str, error: Exception) -> str:
    """Message for a file `reader` failed on: what the file's bytes look like, then the reader's words."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    said, kind = lines[0], _file_kind(Path(path))
    if said.startswith("Weights only load failed"):
        # torch's first lines advise weights_only=False; what it refused follows "WeightsUnpickler error:".
        at = next((i for i, line in enumerate(lines) if "WeightsUnpickler error:" in line), None)
        if at is not None:
            said = (
                lines[at].split("WeightsUnpickler error:", 1)[1].strip() or lines[min(at + 1, len(lines) - 1)]
            )
            said = said.split(". ")[0]
        if kind in ("zip", "pickle"):
            return (
                f"cannot read {path}: it holds objects other than tensors and plain containers, which "
                f"{reader} refuses to unpickle since that could run code ({said})"
            )
    return f"cannot read {path}: {_what_file_is(Path(path))}; {reader} failed: {said}"


# What a file that failed to load is, by its first bytes; see _file_kind.
_FILE_KINDS = {
    "empty": "the file is empty",
    "broken zip": "a truncated or corrupt zip archive (torch.save and TorchScript files are zips)",
    "zip": "a zip archive (the container of torch.save and TorchScript files)",
    "safetensors": "it looks like a safetensors file: give it the .safetensors suffix",
    "pickle": "a pickle (the legacy torch.save format)",
    "text": "a text file, not a weights file",
    "unknown": "not a weights file of a known format",
}


def _file_kind(path: Path) -> str:
    """A key of _FILE_KINDS: what the file's first bytes say it is (a zip's truncation shows at its end)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip" if zipfile.is_zipfile(path) else "broken zip"
    # Checked before pickles: a 128..255-byte header length also starts with 0x80.
    if len(head) == 9 and head[8:] == b"{" and struct.unpack("<Q", head[:8])[0] <= _MAX_SAFETENSORS_HEADER:
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "text" if head.isascii() else "unknown"


def _what_file_is(path: Path) -> str:
    """What a file that failed to load looks like, with its first bytes where they say more."""
    kind = _file_kind(path)
    if kind in ("text", "unknown"):
        with open(path, "rb") as f:
            return f"{_FILE_KINDS[kind]} (starts with {f.read(16)!r})"
    return _FILE_KINDS[kind]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
