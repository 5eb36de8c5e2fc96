"""big_vision's `.npz` checkpoints of SigLIP and SigLIP 2 <-> clip_jax params.

big_vision saves the flattened Flax params tree, `/`-separated, with or without a leading `params/`:
`img/embedding/kernel`, `img/pos_embedding`, `img/Transformer/encoderblock_N/...`, `img/MAPHead_0/...`,
`txt/Embed_0/embedding`, `txt/Encoder_0/encoderblock_N/...`, `txt/head/...`, `t` (log temperature) and
`b` (logit bias). Models trained with `scan=True` store each tower's blocks once, as `encoderblock/...`
with a leading layer axis. clip_jax's tree is the same Flax layout under other names, except that q, k
and v are one [W, 3, H, D] kernel here and three [W, H, D] kernels there. The reader renames the file
into clip_jax's (per-layer) tree and hands it on in open_clip's key names, so that the shape check and its
error messages are those of every other format (`clip_jax.weights.load`).

Which GELU: big_vision trained every SigLIP with the tanh approximation (`nn.gelu`'s default), which the
named SigLIP configs compute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax.weights import open_clip

SUFFIX = ".npz"
_ROOT = "params/"
# A block's parts: big_vision's path (below encoderblock_N/) -> clip_jax's (below resblocks_N/).
_BLOCK = {
    "LayerNorm_0": "ln_1",
    "LayerNorm_1": "ln_2",
    "MlpBlock_0/Dense_0": "mlp/c_fc",
    "MlpBlock_0/Dense_1": "mlp/c_proj",
    "MultiHeadDotProductAttention_0/out": "attn/out",
}
_MAP_HEAD = {
    "MAPHead_0/LayerNorm_0": "visual/attn_pool/ln_mlp",
    "MAPHead_0/MlpBlock_0/Dense_0": "visual/attn_pool/mlp/c_fc",
    "MAPHead_0/MlpBlock_0/Dense_1": "visual/attn_pool/mlp/c_proj",
    "MAPHead_0/MultiHeadDotProductAttention_0/out": "visual/attn_pool/attn/out",
}
# Whole paths (without the leading `params/`); the leaf name follows unless it is None.
_SINGLE = {
    "img/embedding": "visual/conv1",
    "img/Transformer/encoder_norm": "visual/ln_post",
    "txt/Embed_0": "text/token_embedding",
    "txt/Encoder_0/encoder_norm": "text/ln_final",
    "txt/head": "text/text_projection",
}
# Arrays big_vision stores with a leading batch axis of 1 ([1, N, W] and the [1, 1, W] probe) or as [1].
_SQUEEZED = {
    "img/pos_embedding": "visual/positional_embedding",
    "txt/pos_embedding": "text/positional_embedding",
    "img/MAPHead_0/probe": "visual/attn_pool/probe",
    "t": "logit_scale",
    "b": "logit_bias",
}
_TOWERS = {"img/Transformer/": "visual/transformer/", "txt/Encoder_0/": "text/transformer/"}
_BLOCK_KEY = re.compile(r"^(img/Transformer/|txt/Encoder_0/)encoderblock(?:_(\d+))?/(.+)$")
_QKV = ("query", "key", "value")
_ATTENTION = "MultiHeadDotProductAttention_0/"


def is_big_vision_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix == SUFFIX and Path(path).is_file()


def read_big_vision(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays of a big_vision SigLIP `.npz`, in open_clip's key names, and {open_clip key: npz key}.

    Keys it does not know stay under their npz name (the shape check then reports them as unexpected);
    a file numpy cannot read is a ValueError naming it.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            flat = {k[len(_ROOT) :] if k.startswith(_ROOT) else k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {path} as a big_vision .npz checkpoint: {e}") from None
    tree, origin, unknown = big_vision_to_params(flat)
    state_dict = open_clip.params_to_state_dict(tree)
    key_of = {e.path: e.key for e in open_clip.mapping(tree)}
    named_origin = {key_of[p]: src for p, src in origin.items()}
    state_dict.update(unknown)
    return state_dict, named_origin


def big_vision_to_params(
    flat: Mapping[str, np.ndarray],
) -> tuple[dict, dict[tuple[str, ...], str], dict[str, np.ndarray]]:
    """big_vision's flat arrays (no `params/` prefix) -> (clip_jax per-layer tree, {tree path: npz key},
    {unknown npz key: array}). Scanned blocks (`encoderblock/`, a leading layer axis) are split per layer."""
    tree: dict = {}
    origin: dict[tuple[str, ...], str] = {}
    unknown: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, ...], dict[str, tuple[str, np.ndarray]]] = {}

    def put(path: str, value: np.ndarray, src: str) -> None:
        parts = tuple(path.split("/"))
        # q, k, v kernels [W, H, D] and biases [H, D] are stacked into one qkv parameter below.
        if len(parts) > 1 and parts[-2] in _QKV:
            qkv.setdefault(parts[:-2] + ("qkv", parts[-1]), {})[parts[-2]] = (src, value)
            return
        _set(tree, parts, np.asarray(value))
        origin[parts] = src

    for key, value in flat.items():
        if key in _SQUEEZED:
            put(
                _SQUEEZED[key],
                np.asarray(value).reshape(np.shape(value)[-2:] if np.ndim(value) > 1 else ()),
                key,
            )
        elif (where := _prefix_match(key, _SINGLE)) is not None:
            prefix, leaf = where
            put(f"{_SINGLE[prefix]}/{leaf}", value, key)
        elif key.startswith("img/") and (where := _prefix_match(key[4:], _MAP_HEAD)) is not None:
            put(f"{_MAP_HEAD[where[0]]}/{where[1]}", value, key)
        elif key.startswith(f"img/MAPHead_0/{_ATTENTION}"):
            put("visual/attn_pool/attn/" + key[len(f"img/MAPHead_0/{_ATTENTION}") :], value, key)
        elif m := _BLOCK_KEY.match(key):
            tower, index, rest = m.groups()
            part = _block_part(rest)
            if part is None:
                unknown[key] = value
                continue
            layers = [(int(index), value)] if index is not None else list(enumerate(np.asarray(value)))
            for i, layer_value in layers:
                put(f"{_TOWERS[tower]}resblocks_{i}/{part}", layer_value, key)
        else:
            unknown[key] = value
    for parts, found in qkv.items():
        if set(found) != set(_QKV):
            for src, value in found.values():
                unknown[src] = value  # reported by the shape check, with the missing qkv parameter
            continue
        srcs, values = zip(*(found[n] for n in _QKV), strict=True)
        stacked = np.stack([np.asarray(v) for v in values], axis=1 if parts[-1] == "kernel" else 0)
        _set(tree, parts, stacked)
        origin[parts] = "+".join(dict.fromkeys(srcs))
    return tree, origin, unknown


def params_to_big_vision(params: Mapping[str, Any], scanned: bool = False) -> dict[str, np.ndarray]:
    """clip_jax per-layer params of a SigLIP -> big_vision's flat arrays with the `params/` prefix, as
    big_vision saves them (`scanned`: each tower's blocks stacked under `encoderblock/`)."""
    out: dict[str, np.ndarray] = {}
    inverse_single = {v: k for k, v in {**_SINGLE, **{"img/" + k: v for k, v in _MAP_HEAD.items()}}.items()}
    inverse_squeezed = {v: k for k, v in _SQUEEZED.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    inverse_towers = {v: k for k, v in _TOWERS.items()}
    blocks: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for parts, value in open_clip._flatten(params):
        path, value = "/".join(parts), np.asarray(value)
        if path in inverse_squeezed:
            key = inverse_squeezed[path]
            out[key] = (
                value.reshape((1,) * (3 - value.ndim) + value.shape) if value.ndim else value.reshape(1)
            )
            continue
        tower = next((t for t in inverse_towers if path.startswith(t)), None)
        if tower is not None:
            layer, rest = path[len(tower) :].split("/", 1)
            index = int(layer.rsplit("_", 1)[1])
            for key, array in _block_arrays(rest, value, inverse_block):
                blocks.setdefault((inverse_towers[tower], key), {})[index] = array
            continue
        module, leaf = path.rsplit("/", 1)
        if module == "visual/attn_pool/attn/qkv" or module == "visual/attn_pool/attn/out":
            for key, array in _block_arrays(path[len("visual/attn_pool/") :], value, inverse_block):
                out[f"img/MAPHead_0/{key}"] = array
            continue
        if module not in inverse_single:
            raise ValueError(f"{path}: not a parameter of a SigLIP model, which big_vision's layout has")
        out[f"{inverse_single[module]}/{leaf}"] = value
    for (tower, key), layers in blocks.items():
        if scanned:
            out[f"{tower}encoderblock/{key}"] = np.stack([layers[i] for i in range(len(layers))])
        else:
            out.update({f"{tower}encoderblock_{i}/{key}": a for i, a in layers.items()})
    return {_ROOT + k: v for k, v in out.items()}


def save_big_vision(params: Mapping[str, Any], path: str | os.PathLike, scanned: bool = False) -> Path:
    """Write `params` (a SigLIP's, per layer) as a big_vision `.npz` checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **params_to_big_vision(params, scanned))
    return path


def _block_arrays(
    rest: str, value: np.ndarray, inverse_block: Mapping[str, str]
) -> list[tuple[str, np.ndarray]]:
    """One block leaf (clip_jax's path below the block) -> [(big_vision's path below the block, array)]."""
    module, leaf = rest.rsplit("/", 1)
    if module == "attn/qkv":
        axis = 1 if leaf == "kernel" else 0
        return [(f"{_ATTENTION}{name}/{leaf}", np.take(value, i, axis=axis)) for i, name in enumerate(_QKV)]
    if module not in inverse_block:
        raise ValueError(f"{rest}: not a parameter of a transformer block")
    return [(f"{inverse_block[module]}/{leaf}", value)]


def _block_part(rest: str) -> str | None:
    """big_vision's path below a block -> clip_jax's, or None for one it does not have."""
    if rest.startswith(_ATTENTION) and rest.split("/")[1] in _QKV:
        return "attn/" + rest[len(_ATTENTION) :]
    where = _prefix_match(rest, _BLOCK)
    return None if where is None else f"{_BLOCK[where[0]]}/{where[1]}"


def _prefix_match(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """(prefix, leaf) when `key` is `prefix/leaf` with a prefix in `table` and a one-part leaf."""
    prefix, _, leaf = key.rpartition("/")
    return (prefix, leaf) if prefix in table and leaf else None


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value
