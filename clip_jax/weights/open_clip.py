"""open_clip / OpenAI state dict <-> clip_jax params.

The mapping is a table built from the parameter tree itself: every Flax leaf has one state-dict key and
a layout `kind` that says how the PyTorch tensor is rearranged (see `clip_jax/models/transformer.py` for
the Flax shapes). The same table drives import, export and the shape check, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from clip_jax.models.resnet import is_batch_stat

# Keys that are buffers or hyperparameters in some checkpoints, never weights.
IGNORED_KEYS = ("attn_mask", "visual.attn_mask")
# BatchNorm2d's batch counter (a ResNet's): torch reads it only with momentum=None, which OpenAI's and
# open_clip's ResNets do not use, so it is skipped on import and written as 0 on export (which torch's
# strict load_state_dict needs).
BN_COUNTER = "num_batches_tracked"


def is_ignored(key: str) -> bool:
    """True for a state-dict key that holds no weight clip_jax reads (buffers, hyperparameters)."""
    return key in IGNORED_KEYS or key.rsplit(".", 1)[-1] == BN_COUNTER


# Problems listed in one error message; the count of the rest follows.
_MAX_SHOWN = 20

# Scalars that open_clip stores either as shape [] or [1] (nonscalar_logit_scale).
_SCALARS = ("logit_scale", "logit_bias")


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # path in the (per-layer) Flax params tree
    key: str  # open_clip state-dict key
    kind: str  # one of _LAYOUTS


def _conv_to_flax(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return t.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]


def _conv_from_flax(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _qkv_to_flax(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    width, three, heads, head_dim = shape  # rows of in_proj_weight are (q|k|v, head, dim)
    return t.reshape(three, heads, head_dim, width).transpose(3, 0, 1, 2)


def _qkv_from_flax(a: np.ndarray) -> np.ndarray:
    return a.transpose(1, 2, 3, 0).reshape(-1, a.shape[0])


def _out_to_flax(t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return t.T.reshape(shape)  # [W_out, H*D] -> [H, D, W_out]


def _out_from_flax(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T


# kind: (torch -> flax given the flax shape, flax -> torch, torch shape of a flax shape)
_LAYOUTS: dict[str, tuple[Callable, Callable, Callable[[tuple[int, ...]], tuple[int, ...]]]] = {
    "copy": (lambda t, s: t.reshape(s), lambda a: a, lambda s: s),
    "linear": (lambda t, s: t.T, lambda a: a.T, lambda s: s[::-1]),
    "conv": (_conv_to_flax, _conv_from_flax, lambda s: (s[3], s[2], s[0], s[1])),
    "qkv": (_qkv_to_flax, _qkv_from_flax, lambda s: (math.prod(s[1:]), s[0])),
    "qkv_bias": (lambda t, s: t.reshape(s), lambda a: a.reshape(-1), lambda s: (math.prod(s),)),
    "out": (_out_to_flax, _out_from_flax, lambda s: (s[-1], math.prod(s[:-1]))),
}


def _entry(path: tuple[str, ...]) -> Entry:
    """The state-dict key and layout of one Flax leaf."""
    parts = list(path)
    # open_clip's CLIP keeps the text tower at the top level (no `text.` prefix).
    if parts[0] == "text":
        parts = parts[1:]
    *mods, leaf = parts
    parent = mods[-1] if mods else ""
    kind = "copy"
    if (
        _CONV.fullmatch(parent) and leaf == "kernel"
    ):  # the ViT's patch conv1 (its bias: SigLIP's); a ResNet's convs
        kind = "conv"
    elif parent == "qkv":
        kind = "qkv" if leaf == "kernel" else "qkv_bias"
    elif parent == "out":
        kind = "out" if leaf == "kernel" else "copy"
    elif leaf == "kernel":
        kind = "linear"
    names = []
    for m in mods:
        if indexed := _INDEXED.fullmatch(m):  # resblocks_3 -> resblocks.3, layer2_0 -> layer2.0
            names += list(indexed.groups())
        else:
            names.append({"qkv": "in_proj", "out": "out_proj"}.get(m, m))
    tail = {"scale": "weight", "kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
    if parent == "qkv":  # nn.MultiheadAttention names: in_proj_weight / in_proj_bias
        names[-1] = f"in_proj_{tail}"
        return Entry(tuple(path), ".".join(names), kind)
    return Entry(tuple(path), ".".join(names + [tail]), kind)


# Flax module names of the convolutions (ViT: conv1; ResNet: conv1-3 of the stem and of each Bottleneck,
# and the downsample branch's conv, torch's `downsample.0`) and of the modules torch keeps in a list.
_CONV = re.compile(r"conv\d|downsample_0")
_INDEXED = re.compile(r"(resblocks|layer\d|downsample)_(\d+)")


def mapping(param_shapes: Mapping[str, Any]) -> list[Entry]:
    """Table of entries for a per-layer (unscanned) params tree of shapes or arrays."""
    return [_entry(path) for path, _ in _flatten(param_shapes)]


def expected_shapes(param_shapes: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{state-dict key: torch shape} that a checkpoint of this params tree must have."""
    return {
        _entry(path).key: tuple(_LAYOUTS[_entry(path).kind][2](tuple(leaf.shape)))
        for path, leaf in _flatten(param_shapes)
    }


def check_state_dict(
    state_dict: Mapping[str, np.ndarray],
    param_shapes: Mapping[str, Any],
    what: str = "the model config",
    origin: Mapping[str, str] | None = None,
    source: str = "checkpoint",
) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped key (expected vs found shapes).

    `source` names what is checked in the message (e.g. 'checkpoint /path/model.safetensors'); `origin`
    maps open_clip keys to the checkpoint's own key names (for HF files).
    """
    expected = expected_shapes(param_shapes)
    found = {k: tuple(v.shape) for k, v in state_dict.items() if not is_ignored(k)}
    # Embeddings, norms and projections first: they tell a wrong model apart before any block key does.
    order = lambda keys: sorted(keys, key=lambda k: (".resblocks." in k, k))
    name = lambda k: f"{k} (file key {origin[k]})" if origin and k in origin else k
    misshaped = [
        f"mis-shaped key {name(k)}: expected shape {expected[k]}, found shape {found[k]}"
        for k in order(set(expected) & set(found))
        if expected[k] != found[k]
        and not (k in _SCALARS and math.prod(expected[k]) == math.prod(found[k]) == 1)
    ]
    missing = [
        f"missing key {name(k)}: expected shape {expected[k]}, found nothing"
        for k in order(set(expected) - set(found))
    ]
    extra = [
        f"unexpected key {name(k)}: expected nothing, found shape {found[k]}"
        for k in order(set(found) - set(expected))
    ]
    # Mis-shaped keys first: they are what a wrong model name or config shows most clearly. Each kind of
    # problem gets its share of the lines (the first missing key shows beside many mis-shaped ones), and
    # the share a kind does not use goes to the others in that order.
    kinds = [(p, k) for p, k in ((misshaped, "mis-shaped"), (missing, "missing"), (extra, "unexpected")) if p]
    if kinds:
        rooms = [min(len(p), _MAX_SHOWN // len(kinds)) for p, _ in kinds]
        for i, (problems, _) in enumerate(kinds):
            rooms[i] += min(len(problems) - rooms[i], _MAX_SHOWN - sum(rooms))
        lines = []
        for (problems, kind), room in zip(kinds, rooms, strict=True):
            lines += problems[:room]
            if len(problems) > room:
                lines.append(f"... and {len(problems) - room} more {kind} keys")
        shown = "\n  ".join(lines)
        raise ValueError(
            f"{source} does not match {what} ({len(misshaped)} mis-shaped, {len(missing)} missing, "
            f"{len(extra)} unexpected keys):\n  {shown}"
        )


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any], dtype: Any = np.float32
) -> dict:
    """Rearrange an open_clip state dict into a per-layer Flax params tree (call check_state_dict first)."""
    params: dict = {}
    for path, leaf in _flatten(param_shapes):
        e = _entry(path)
        value = _LAYOUTS[e.kind][0](np.asarray(state_dict[e.key]), tuple(leaf.shape))
        # BatchNorm's running statistics stay float32 whatever the params' dtype, as the model keeps them.
        _set(params, path, np.asarray(value, dtype=np.float32 if is_batch_stat(path) else dtype))
    return params


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-layer Flax params -> open_clip state dict (numpy, contiguous, the params' dtype), with each
    BatchNorm's `num_batches_tracked` (0, see BN_COUNTER) so that torch loads it strictly."""
    out = {}
    for path, leaf in _flatten(params):
        e = _entry(path)
        out[e.key] = np.asarray(_LAYOUTS[e.kind][1](np.asarray(leaf)), order="C")
        if path[-1] == "running_var":
            out[e.key.rsplit(".", 1)[0] + "." + BN_COUNTER] = np.zeros((), np.int64)
    return out


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for k in sorted(tree):
        v = tree[k]
        if isinstance(v, Mapping):
            out += _flatten(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


# open_clip's SigLIP models (CustomTextCLIP) hold timm's ViT as `visual.trunk`; its names -> the names
# clip_jax's params tree gives the same tensors (see clip_jax.weights.hf for the other SigLIP layout).
TIMM_TRUNK = "visual.trunk."
_TIMM_BLOCK = re.compile(r"^visual\.trunk\.blocks\.(\d+)\.(.+)$")
_TIMM_BLOCK_PARTS = {
    "norm1.": "ln_1.",
    "norm2.": "ln_2.",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_TIMM_SINGLE = {
    "patch_embed.proj.weight": "visual.conv1.weight",
    "patch_embed.proj.bias": "visual.conv1.bias",
    "norm.weight": "visual.ln_post.weight",
    "norm.bias": "visual.ln_post.bias",
    "attn_pool.proj.weight": "visual.attn_pool.attn.out_proj.weight",
    "attn_pool.proj.bias": "visual.attn_pool.attn.out_proj.bias",
    "attn_pool.norm.weight": "visual.attn_pool.ln_mlp.weight",
    "attn_pool.norm.bias": "visual.attn_pool.ln_mlp.bias",
    "attn_pool.mlp.fc1.weight": "visual.attn_pool.mlp.c_fc.weight",
    "attn_pool.mlp.fc1.bias": "visual.attn_pool.mlp.c_fc.bias",
    "attn_pool.mlp.fc2.weight": "visual.attn_pool.mlp.c_proj.weight",
    "attn_pool.mlp.fc2.bias": "visual.attn_pool.mlp.c_proj.bias",
}
# [1, N, W] in timm (a batch axis), [N, W] in clip_jax.
_TIMM_SQUEEZED = {"pos_embed": "visual.positional_embedding", "attn_pool.latent": "visual.attn_pool.probe"}


def is_timm_siglip_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for open_clip's timm-trunk SigLIP (`visual.trunk.*` with timm's MAP head)."""
    return any(k.startswith(TIMM_TRUNK + "attn_pool.") for k in state_dict)


def timm_siglip_to_open_clip(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename the `visual.trunk.*` keys of an open_clip SigLIP state dict into the names the rest of this
    module reads; timm's pooling head splits the probe's query projection (`q`) from the key/value one
    (`kv`), which are stacked back into one q|k|v `in_proj`. Returns the state dict and {new key: file key};
    keys that match no rule keep their name, so that the shape check reports them."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        rest = key[len(TIMM_TRUNK) :] if key.startswith(TIMM_TRUNK) else None
        new = key
        if rest in _TIMM_SINGLE:
            new = _TIMM_SINGLE[rest]
        elif rest in _TIMM_SQUEEZED:
            new, value = _TIMM_SQUEEZED[rest], np.asarray(value).reshape(value.shape[1:])
        elif m := _TIMM_BLOCK.match(key):
            idx, part = m.groups()
            for old, renamed in _TIMM_BLOCK_PARTS.items():
                if part.startswith(old):
                    new = f"visual.transformer.resblocks.{idx}.{renamed}{part[len(old) :]}"
                    break
        elif rest is not None and rest.startswith(("attn_pool.q.", "attn_pool.kv.")):
            continue  # stacked below
        out[new] = value
        if new != key:
            origin[new] = key
    for leaf in ("weight", "bias"):
        q, kv = f"{TIMM_TRUNK}attn_pool.q.{leaf}", f"{TIMM_TRUNK}attn_pool.kv.{leaf}"
        if q in state_dict and kv in state_dict:
            new = f"visual.attn_pool.attn.in_proj_{leaf}"
            out[new] = np.concatenate([np.asarray(state_dict[q]), np.asarray(state_dict[kv])], axis=0)
            origin[new] = f"{q}+{kv}"
        else:  # one without the other: keep what is there, the shape check names the missing tensor
            for k in (q, kv):
                if k in state_dict:
                    out[k] = state_dict[k]
    return out, origin
