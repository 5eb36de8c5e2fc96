"""HuggingFace `transformers.CLIPModel` and `SiglipModel` checkpoints: key names, q/k/v packing and
config.json.

A HF state dict is rewritten into open_clip's key names (q, k and v stacked into `in_proj_*`, the
projection Linears transposed into open_clip's [width, embed] matrices), so that one mapping
(`clip_jax.weights.open_clip`) serves every format. SigLIP's keys that open_clip's CLIP has no name for
(the attention-pooling head, the patch embedding's bias) get the names clip_jax's params tree gives them
(`visual.attn_pool.*`, `visual.conv1.bias`); its text head is open_clip's proj_bias `text_projection`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.models.text_encoder import TextEncoderConfig
from clip_jax.weights.infer import mlp_ratio

# Buffers some transformers versions saved; not weights.
HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_TOWERS = {"vision_model.": "visual.", "text_model.": ""}

# Per-block names: HF suffix -> open_clip suffix (q/k/v are handled separately).
_BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}

# Non-block names: HF key -> open_clip key.
_SINGLE = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
    # SigLIP's (SiglipModel): the patch embedding's bias, the attention-pooling head, the text head.
    "vision_model.embeddings.patch_embedding.bias": "visual.conv1.bias",
    "vision_model.head.attention.in_proj_weight": "visual.attn_pool.attn.in_proj_weight",
    "vision_model.head.attention.in_proj_bias": "visual.attn_pool.attn.in_proj_bias",
    "vision_model.head.attention.out_proj.weight": "visual.attn_pool.attn.out_proj.weight",
    "vision_model.head.attention.out_proj.bias": "visual.attn_pool.attn.out_proj.bias",
    "vision_model.head.layernorm.weight": "visual.attn_pool.ln_mlp.weight",
    "vision_model.head.layernorm.bias": "visual.attn_pool.ln_mlp.bias",
    "vision_model.head.mlp.fc1.weight": "visual.attn_pool.mlp.c_fc.weight",
    "vision_model.head.mlp.fc1.bias": "visual.attn_pool.mlp.c_fc.bias",
    "vision_model.head.mlp.fc2.weight": "visual.attn_pool.mlp.c_proj.weight",
    "vision_model.head.mlp.fc2.bias": "visual.attn_pool.mlp.c_proj.bias",
    "text_model.head.weight": "text_projection.weight",  # a Linear in both: no transpose
    "text_model.head.bias": "text_projection.bias",
    "logit_bias": "logit_bias",
}
# SigLIP's probe is [1, 1, W] (batch, queries, width); clip_jax's [1, W] (queries, width).
_PROBE = ("vision_model.head.probe", "visual.attn_pool.probe")
# HF Linear weights [embed, width]; open_clip stores x @ proj with proj [width, embed].
_PROJECTIONS = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}

_LAYER = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


# transformers 5 saves a CLIPTextModel's keys without the `text_model.` prefix that earlier versions (and
# the Stable Diffusion checkpoints on the hub) have; both load in transformers.
_UNPREFIXED_TEXT_MODEL = ("embeddings.", "encoder.", "final_layer_norm.")


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in state_dict) or (
        "embeddings.token_embedding.weight" in state_dict
    )


def with_text_model_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A CLIPTextModel state dict with the `text_model.` prefix on its text tower's keys, however saved."""
    if "embeddings.token_embedding.weight" not in state_dict:
        return dict(state_dict)
    return {
        "text_model." + k if k.startswith(_UNPREFIXED_TEXT_MODEL) else k: v for k, v in state_dict.items()
    }


def hf_to_open_clip(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Rename a HF CLIPModel state dict into open_clip's layout.

    Returns the new state dict and {open_clip key: HF key} for error messages. Keys that match no rule
    are kept under their HF name so that the shape check reports them as unexpected.
    """
    state_dict = with_text_model_prefix(state_dict)
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in state_dict.items():
        if key in HF_IGNORED:
            continue
        if key in _SINGLE:
            new = _SINGLE[key]
        elif key == _PROBE[0]:
            new = _PROBE[1]
            value = np.asarray(value).reshape(value.shape[1:]) if value.ndim == 3 else value
        elif key in _PROJECTIONS:
            new, value = _PROJECTIONS[key], np.asarray(value).T
        elif m := _LAYER.match(key):
            tower, idx, name, leaf = m.groups()
            prefix = f"{_TOWERS[tower + '.']}transformer.resblocks.{idx}."
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, leaf), {})[name[-6]] = (key, value)
                continue
            new = prefix + _BLOCK[name] + "." + leaf if name in _BLOCK else key
        else:
            new = key
        out[new] = value
        if new != key:
            origin[new] = key
    for (prefix, leaf), parts in qkv.items():
        new = f"{prefix}attn.in_proj_{leaf}"
        if set(parts) != {"q", "k", "v"}:
            some_key, some_value = next(iter(parts.values()))
            base = some_key.rsplit(".", 2)[0]
            missing = [f"{base}.{p}_proj.{leaf}" for p in "qkv" if p not in parts]
            raise ValueError(
                f"missing key {missing[0]}: expected shape {tuple(some_value.shape)} (as {some_key}), found nothing"
            )
        shapes = {parts[p][0]: tuple(parts[p][1].shape) for p in "qkv"}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"q/k/v projections must have equal shapes, found {shapes}")
        out[new] = np.concatenate([np.asarray(parts[p][1]) for p in "qkv"], axis=0)
        origin[new] = "/".join(parts[p][0] for p in "qkv")
    return out, origin


def is_text_only(state_dict: Mapping[str, Any]) -> bool:
    """True for a HF CLIPTextModel(WithProjection) state dict: a text tower and no vision tower."""
    keys = with_text_model_prefix(state_dict)
    return any(k.startswith("text_model.") for k in keys) and not any(
        k.startswith("vision_model.") for k in keys
    )


def text_encoder_config_from_hf(hf_config: Mapping[str, Any], projection: bool) -> TextEncoderConfig:
    """TextEncoderConfig of a HF CLIPTextModel(WithProjection) `config.json` (model_type 'clip_text_model'),
    or of a CLIPModel's text tower (model_type 'clip'); `projection`: the weights have a text_projection.

    clip_jax pools at the argmax of the token ids, HF at the first `eos_token_id` (the argmax too with the
    legacy eos_token_id 2): they agree when the EOT is the vocabulary's largest id, as in CLIP's BPE.
    """
    model_type = hf_config.get("model_type", "clip_text_model")
    if model_type == "clip":
        t = hf_config.get("text_config", {}) or {}
        projection_dim = hf_config.get("projection_dim", 512)
    elif model_type == "clip_text_model":
        t, projection_dim = hf_config, hf_config.get("projection_dim", 512)
    else:
        raise ValueError(
            f"model_type {model_type!r} is not a CLIP text encoder: clip_jax reads 'clip_text_model' and 'clip'"
        )
    act = t.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"unsupported hidden_act {act!r}: clip_jax has quick_gelu or (exact) gelu")
    width, vocab = t.get("hidden_size", 512), t.get("vocab_size", 49408)
    eos = t.get("eos_token_id", 49407)  # CLIPTextConfig's default
    if eos not in (2, vocab - 1):
        raise ValueError(
            f"eos_token_id {eos} is not the largest id of the {vocab}-token vocabulary: clip_jax pools at "
            "the largest token id (CLIP's end-of-text), so this encoder would pool elsewhere"
        )
    text = TextConfig(
        context_length=t.get("max_position_embeddings", 77),
        vocab_size=vocab,
        width=width,
        heads=t.get("num_attention_heads", 8),
        layers=t.get("num_hidden_layers", 12),
        mlp_ratio=mlp_ratio(t.get("intermediate_size", 2048), width),
    )
    return TextEncoderConfig(
        text=text,
        embed_dim=projection_dim if projection else None,
        quick_gelu=act == "quick_gelu",
        norm_eps=float(t.get("layer_norm_eps", 1e-5)),
    )


def config_from_hf(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """CLIPConfig from a HF CLIPModel or SiglipModel `config.json` (told apart by its model_type)."""
    model_type = hf_config.get("model_type", "clip")
    if model_type == "siglip":
        return siglip_config_from_hf(hf_config)
    if model_type == "siglip2":
        # NaFlex: patches of the image at its own aspect ratio, their positions resized per image.
        raise ValueError(
            "model_type 'siglip2' is SigLIP 2's NaFlex model (Siglip2Model: variable resolution and aspect "
            "ratio, a per-image resized position embedding), which clip_jax does not build; take the "
            "fixed-resolution checkpoint of the same model instead (google/siglip2-base-patch16-224, "
            "...-256/-384/-512, model_type 'siglip'), which clip_jax loads"
        )
    if model_type == "clip_text_model":
        raise ValueError(
            "a text-only CLIPTextModel / CLIPTextModelWithProjection (model_type 'clip_text_model', e.g. a "
            "Stable Diffusion text_encoder): load it with clip_jax.weights.load_text_encoder"
        )
    if model_type != "clip":
        raise ValueError(
            f"model_type {model_type!r} is not supported: clip_jax reads HF's 'clip' and 'siglip'"
        )
    return clip_config_from_hf(hf_config)


def clip_config_from_hf(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """CLIPConfig from a HF CLIPModel `config.json` (hidden_act decides between QuickGELU and GELU)."""
    v, t = hf_config.get("vision_config", {}), hf_config.get("text_config", {})
    acts = {v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise ValueError(f"unsupported hidden_act {sorted(acts)}: clip_jax has quick_gelu or (exact) gelu")
    for name, sub in (("vision", v), ("text", t)):
        eps = sub.get("layer_norm_eps", 1e-5)
        if eps != 1e-5:
            raise ValueError(f"{name} layer_norm_eps={eps}: clip_jax's LayerNorm uses 1e-5")
    v_width = v.get("hidden_size", 768)
    v_heads = v.get("num_attention_heads", 12)
    vision = VisionConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 32),
        width=v_width,
        layers=v.get("num_hidden_layers", 12),
        head_width=v_width // v_heads,
        mlp_ratio=mlp_ratio(v.get("intermediate_size", 3072), v_width),
    )
    t_width = t.get("hidden_size", 512)
    text = TextConfig(
        context_length=t.get("max_position_embeddings", 77),
        vocab_size=t.get("vocab_size", 49408),
        width=t_width,
        heads=t.get("num_attention_heads", 8),
        layers=t.get("num_hidden_layers", 12),
        mlp_ratio=mlp_ratio(t.get("intermediate_size", 2048), t_width),
    )
    return CLIPConfig(
        embed_dim=hf_config.get("projection_dim", 512),
        vision=vision,
        text=text,
        quick_gelu=acts == {"quick_gelu"},
    )


# HF activation names -> CLIPConfig's switches (quick_gelu, gelu_approximate). gelu_new is the tanh form too.
_SIGLIP_ACTS = {
    "gelu_pytorch_tanh": (False, True),
    "gelu_new": (False, True),
    "gelu": (False, False),
    "quick_gelu": (True, False),
}
# SiglipConfig options that change the function, and the values clip_jax builds (first: HF's default).
_SIGLIP_FIXED = {"vision": {"vision_use_head": (True,), "num_channels": (3,)}, "text": {}}


def siglip_config_to_hf(config: CLIPConfig) -> dict[str, Any]:
    """The HF SiglipModel `config.json` fields of a clip_jax SigLIP config: the inverse of
    `siglip_config_from_hf`, to build a transformers reference of the same shapes (tests, benchmarks)."""
    acts = [
        name for name, flags in _SIGLIP_ACTS.items() if flags == (config.quick_gelu, config.gelu_approximate)
    ]
    t, v = config.text, config.vision
    common = {"layer_norm_eps": config.norm_eps, "hidden_act": acts[0]}
    return {
        "text_config": {
            "hidden_size": t.width,
            "intermediate_size": t.mlp_width,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length,
            "projection_size": config.embed_dim,
            **common,
        },
        "vision_config": {
            "hidden_size": v.width,
            "intermediate_size": v.mlp_width,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            **common,
        },
    }


def siglip_config_from_hf(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """CLIPConfig of a HF SiglipModel `config.json` (SiglipConfig's defaults for what it leaves out).

    The towers are clip_jax's ViT and text transformer with SigLIP's switches (attention pooling, no class
    token / ln_pre / projection; non-causal text pooled at the last position, biased head). An option
    whose value changes the model away from that (no pooling head, other channels or activation, towers
    of unequal activation or LayerNorm eps) is a ValueError naming it.
    """
    v, t = hf_config.get("vision_config", {}) or {}, hf_config.get("text_config", {}) or {}
    for name, sub in (("vision", v), ("text", t)):
        bad = {k: sub[k] for k, ok in _SIGLIP_FIXED[name].items() if k in sub and sub[k] not in ok}
        if bad:
            raise ValueError(f"SigLIP {name}_config option(s) {bad} not supported by clip_jax")
    acts = {v.get("hidden_act", "gelu_pytorch_tanh"), t.get("hidden_act", "gelu_pytorch_tanh")}
    if len(acts) != 1 or not acts <= set(_SIGLIP_ACTS):
        raise ValueError(
            f"SigLIP hidden_act {sorted(acts)} not supported: clip_jax builds one of {sorted(_SIGLIP_ACTS)} "
            "in both towers"
        )
    eps = {v.get("layer_norm_eps", 1e-6), t.get("layer_norm_eps", 1e-6)}
    if len(eps) != 1:
        raise ValueError(f"SigLIP layer_norm_eps differs between the towers {sorted(eps)}: clip_jax has one")
    v_width = v.get("hidden_size", 768)
    v_heads = v.get("num_attention_heads", 12)
    if v_width % v_heads:
        raise ValueError(
            f"SigLIP vision hidden_size {v_width} is not a multiple of num_attention_heads {v_heads}"
        )
    vision = VisionConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 16),
        width=v_width,
        layers=v.get("num_hidden_layers", 12),
        head_width=v_width // v_heads,
        mlp_ratio=mlp_ratio(v.get("intermediate_size", 3072), v_width),
        pool_type="map",
        class_token=False,
        patch_bias=True,
        no_ln_pre=True,
        proj=False,
    )
    t_width = t.get("hidden_size", 768)
    embed_dim = t.get("projection_size") or t_width  # HF: projection_size defaults to hidden_size
    if embed_dim != v_width:
        raise ValueError(
            f"SigLIP text projection_size {embed_dim} differs from the vision hidden_size {v_width}: the "
            "image embedding is the pooled vision width, so the two cannot be compared"
        )
    text = TextConfig(
        context_length=t.get("max_position_embeddings", 64),
        vocab_size=t.get("vocab_size", 32000),
        width=t_width,
        heads=t.get("num_attention_heads", 12),
        layers=t.get("num_hidden_layers", 12),
        mlp_ratio=mlp_ratio(t.get("intermediate_size", 3072), t_width),
        no_causal_mask=True,
        pool_type="last",
        proj_bias=True,
    )
    quick, approximate = _SIGLIP_ACTS[acts.pop()]
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=vision,
        text=text,
        quick_gelu=quick,
        gelu_approximate=approximate,
        norm_eps=float(eps.pop()),
        # The initial values of SigLIP's training; loaded weights carry their own.
        init_logit_bias=-10.0,
        init_logit_scale=math.log(10),
    )


# Tokenizer and preprocessing files a HF SigLIP directory carries beside its weights.
SIGLIP_SIDE_FILES = (
    "spiece.model",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def export_siglip_hf(
    params: Mapping[str, Any], cfg: CLIPConfig, out_dir: Any, tokenizer_dir: Any = None
) -> Any:
    """Write a SigLIP model (clip_jax params, per layer or scanned) as a HF SiglipModel directory
    (config.json, model.safetensors) that `transformers.SiglipModel.from_pretrained` loads, with the
    tokenizer and preprocessor files of `tokenizer_dir` (a SigLIP checkpoint directory) copied beside them.
    The inverse of `hf_to_open_clip` for SigLIP's keys: q, k and v split again, the probe [1, 1, W]."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.numpy import save_file

    from clip_jax.models.transformer import unstack_layers
    from clip_jax.weights import open_clip

    if cfg.family != "siglip" or cfg.vision.resnet:
        raise ValueError("export_siglip_hf writes SigLIP models (MAP-pooled ViT, SigLIP text tower) only")
    config = {"model_type": "siglip", "architectures": ["SiglipModel"], **siglip_config_to_hf(cfg)}
    sd = open_clip.params_to_state_dict(unstack_layers(dict(params)))
    inverse = {v: k for k, v in _SINGLE.items()}
    out: dict[str, np.ndarray] = {}
    layer = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
    blocks = {v: k for k, v in _BLOCK.items()}
    for key, value in sd.items():
        value = np.ascontiguousarray(value)
        if key == _PROBE[1]:
            out[_PROBE[0]] = value.reshape((1, *value.shape))
        elif key in inverse:
            out[inverse[key]] = value
        elif m := layer.match(key):
            visual, idx, name, leaf = m.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{idx}."
            out[prefix + blocks[name] + "." + leaf] = value
        elif m := re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key):
            visual, idx, leaf = m.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{idx}.self_attn."
            for part, chunk in zip("qkv", np.split(value, 3, axis=0), strict=True):
                out[f"{prefix}{part}_proj.{leaf}"] = np.ascontiguousarray(chunk)
        else:
            raise ValueError(f"{key}: no HF SiglipModel name for this parameter")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_dir is not None:
        for name in SIGLIP_SIDE_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out_dir / name)
    return out_dir
