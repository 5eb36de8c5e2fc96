"""Export to transformers' format: a directory that `transformers.CLIPModel.from_pretrained` (a two-tower ViT
CLIP) or `CLIPTextModel` / `CLIPTextModelWithProjection` (a text encoder) loads, with the tokenizer files
that `CLIPTokenizer.from_pretrained` reads from the same directory.

    DIR/config.json                  CLIPConfig / CLIPTextConfig fields (model_type, architectures)
    DIR/model.safetensors            HF key names, written with safetensors.numpy (no torch needed)
    DIR/vocab.json, merges.txt       made from clip_jax's BPE asset (the same 49408 tokens and 48894 merges)
    DIR/tokenizer_config.json        CLIPTokenizer, model_max_length, the pad token
    DIR/special_tokens_map.json
    DIR/preprocessor_config.json     (CLIPModel only) OpenAI's eval transform, for CLIPProcessor

The weights are renamed by inverting `clip_jax.weights.hf`'s import tables, so that import and export
cannot drift apart: a round trip is the identity (tests/test_hf_export.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.models.config import CLIPConfig
from clip_jax.models.text_encoder import TextEncoderConfig, text_encoder_param_shapes
from clip_jax.models.transformer import unstack_layers
from clip_jax.preprocess import OPENAI_MEAN, OPENAI_STD
from clip_jax.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer, _read_merges
from clip_jax.weights import hf, open_clip
from clip_jax.weights.load import param_shapes

# HF's names of CLIP's special tokens (clip_jax's BPE asset spells them <start_of_text>, <end_of_text>).
HF_SPECIAL_TOKENS = {SOT_TOKEN: "<|startoftext|>", EOT_TOKEN: "<|endoftext|>"}
WEIGHTS_FILE = "model.safetensors"

_TO_HF = {v: k for k, v in hf._SINGLE.items()}
_BLOCK_TO_HF = {v: k for k, v in hf._BLOCK.items()}
_PROJECTIONS_TO_HF = {v: k for k, v in hf._PROJECTIONS.items()}
_TOWERS_TO_HF = {"visual.": "vision_model", "": "text_model"}
_OPEN_CLIP_LAYER = re.compile(r"^(visual\.|)transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^(visual\.|)transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def open_clip_to_hf(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename an open_clip-layout state dict into HF CLIPModel / CLIPTextModel keys (`hf_to_open_clip`'s
    inverse): in_proj split into q/k/v, the [width, embed] projections transposed into Linear weights."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        if key in _PROJECTIONS_TO_HF:
            out[_PROJECTIONS_TO_HF[key]] = value.T
        elif key in _TO_HF:
            out[_TO_HF[key]] = value
        elif m := _IN_PROJ.match(key):  # nn.MultiheadAttention packs q, k, v as [3W, W]
            tower, idx, leaf = m.groups()
            prefix = f"{_TOWERS_TO_HF[tower]}.encoder.layers.{idx}.self_attn."
            for name, part in zip("qkv", np.split(value, 3, axis=0), strict=True):
                out[f"{prefix}{name}_proj.{leaf}"] = part
        elif m := _OPEN_CLIP_LAYER.match(key):
            tower, idx, name, leaf = m.groups()
            out[f"{_TOWERS_TO_HF[tower]}.encoder.layers.{idx}.{_BLOCK_TO_HF[name]}.{leaf}"] = value
        else:
            raise ValueError(f"no HF name for the open_clip key {key}: transformers' CLIP has no such weight")
    return {k: np.asarray(v, order="C") for k, v in out.items()}  # (ascontiguousarray makes 0-d 1-d)


def hf_act(quick_gelu: bool, gelu_approximate: bool) -> str:
    """transformers' hidden_act name of clip_jax's activation switches."""
    if gelu_approximate:
        raise ValueError(
            "tanh GELU (gelu_approximate) is SigLIP's: transformers' CLIP export has quick_gelu or gelu"
        )
    return "quick_gelu" if quick_gelu else "gelu"


def _text_fields(cfg: TextEncoderConfig) -> dict[str, Any]:
    t = cfg.text
    if not t.padding_inert or t.proj_bias:
        raise ValueError(
            "transformers' CLIP text model is causal, pooled at the EOT and projected without bias: "
            f"this tower has no_causal_mask={t.no_causal_mask}, pool_type={t.pool_type!r}, "
            f"proj_bias={t.proj_bias}"
        )
    return {
        "hidden_size": t.width,
        "intermediate_size": t.mlp_width,
        "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads,
        "max_position_embeddings": t.context_length,
        "vocab_size": t.vocab_size,
        "hidden_act": hf_act(cfg.quick_gelu, cfg.gelu_approximate),
        "layer_norm_eps": cfg.norm_eps,
        # The EOT is the vocabulary's last id; HF pools at its first occurrence, as clip_jax's argmax does.
        "bos_token_id": t.vocab_size - 2,
        "eos_token_id": t.vocab_size - 1,
        "pad_token_id": 1,
    }


def text_config_to_hf(cfg: TextEncoderConfig) -> dict[str, Any]:
    """config.json of a CLIPTextModel (no projection) or CLIPTextModelWithProjection."""
    projected = cfg.embed_dim is not None
    return {
        "architectures": ["CLIPTextModelWithProjection" if projected else "CLIPTextModel"],
        "model_type": "clip_text_model",
        **_text_fields(cfg),
        # CLIPTextModel ignores it; CLIPTextConfig's default 512 would mislead a reader.
        "projection_dim": cfg.embed_dim if projected else cfg.text.width,
        "torch_dtype": "float32",
    }


def clip_config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """config.json of a transformers CLIPModel: a ViT image tower without SigLIP's switches."""
    v = cfg.vision
    if v.resnet or (v.pool_type, v.class_token, v.patch_bias, v.no_ln_pre, v.proj) != (
        "tok",
        True,
        False,
        False,
        True,
    ):
        raise ValueError(
            "transformers' CLIPModel has a ViT image tower with class token, ln_pre and projection: "
            f"this model's is {'a ResNet' if v.resnet else 'a SigLIP-style ViT'}"
        )
    if cfg.init_logit_bias is not None:
        raise ValueError("transformers' CLIPModel has no logit bias (SigLIP's): export it as SiglipModel")
    text = _text_fields(TextEncoderConfig.from_clip(cfg))
    vision = {
        "hidden_size": v.width,
        "intermediate_size": v.mlp_width,
        "num_hidden_layers": v.layers,
        "num_attention_heads": v.heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": 3,
        "hidden_act": text["hidden_act"],
        "layer_norm_eps": cfg.norm_eps,
    }
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": {**text, "projection_dim": cfg.embed_dim},
        "vision_config": {**vision, "projection_dim": cfg.embed_dim},
        "torch_dtype": "float32",
    }


def write_tokenizer_files(
    directory: str | os.PathLike, context_length: int = 77, pad_token: int = EOT_TOKEN
) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of clip_jax's BPE, which
    `transformers.CLIPTokenizer.from_pretrained(directory)` reads; `pad_token` is the id the tokenizer pads
    with: EOT (OpenAI's HF tokenizers, SD 1, SDXL's first) or 0, "!" (SD 2, SDXL's second)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(context_length)
    names = [HF_SPECIAL_TOKENS.get(i, token) for i, token in enumerate(tok.decoder)]
    if not 0 <= pad_token < len(names):
        raise ValueError(f"pad_token {pad_token} is not an id of the {len(names)}-token vocabulary")
    (directory / "vocab.json").write_text(json.dumps(dict(zip(names, range(len(names)), strict=True))))
    merges = "\n".join(" ".join(m) for m in _read_merges())
    (directory / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")
    special = {
        "bos_token": HF_SPECIAL_TOKENS[SOT_TOKEN],
        "eos_token": HF_SPECIAL_TOKENS[EOT_TOKEN],
        "unk_token": HF_SPECIAL_TOKENS[EOT_TOKEN],
        "pad_token": names[pad_token],
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_hf(
    params: dict,
    cfg: CLIPConfig,
    directory: str | os.PathLike,
    *,
    pad_token: int = EOT_TOKEN,
    force: bool = False,
) -> Path:
    """Write a two-tower ViT CLIP (per-layer or scanned params) as a transformers CLIPModel directory."""
    hf_config = clip_config_to_hf(cfg)  # before writing: a model HF's CLIP cannot express raises
    params = jax.tree.map(np.asarray, unstack_layers(params))
    _check(params, param_shapes(cfg), "the given config")
    directory = _prepare(directory, force)
    _write_weights(directory, params, hf_config)
    write_tokenizer_files(directory, cfg.text.context_length, pad_token)
    size = cfg.vision.image_size
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD),
        "do_convert_rgb": True,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return directory


def export_hf_text_encoder(
    params: dict,
    cfg: TextEncoderConfig,
    directory: str | os.PathLike,
    *,
    pad_token: int = EOT_TOKEN,
    force: bool = False,
) -> Path:
    """Write a text encoder (a CLIP's `params["text"]`, or a loaded text-only model's params) as a
    CLIPTextModel directory, or CLIPTextModelWithProjection when `cfg.embed_dim` is set, with the tokenizer
    files (padding with `pad_token`) beside it: what a diffusers pipeline's text_encoder and tokenizer read."""
    hf_config = text_config_to_hf(cfg)
    params = jax.tree.map(np.asarray, unstack_layers(params))
    _check(params, text_encoder_param_shapes(cfg), "the given text encoder config")
    directory = _prepare(directory, force)
    _write_weights(directory, params, hf_config)
    write_tokenizer_files(directory, cfg.text.context_length, pad_token)
    return directory


def _check(params: dict, shapes: dict, what: str) -> None:
    found = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in open_clip.expected_shapes(params).items()}
    open_clip.check_state_dict(found, shapes, what, source="the params tree to export")


def _prepare(directory: str | os.PathLike, force: bool) -> Path:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file: the HF format is a directory, name a new one")
    taken = [n for n in ("config.json", WEIGHTS_FILE) if (directory / n).exists()]
    if taken and not force:
        raise FileExistsError(f"{directory} already holds {taken}: pass force=True (--force) to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _write_weights(directory: Path, params: dict, hf_config: dict) -> None:
    from safetensors.numpy import save_file

    state_dict = open_clip_to_hf(open_clip.params_to_state_dict(params))
    save_file(state_dict, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


def convert_to_hf(
    path: str | os.PathLike,
    output: str | os.PathLike,
    name: str | None = None,
    quick_gelu: bool | None = None,
    *,
    force: bool = False,
) -> tuple[Path, str]:
    """Write the checkpoint at `path` (any format clip_jax reads) as a transformers directory: a text-only
    encoder stays one (CLIPTextModel or ...WithProjection), a two-tower CLIP becomes a CLIPModel. Returns
    the directory and the architecture written (`python -m clip_jax.convert --format hf`)."""
    from clip_jax.weights import load, params_io, readers
    from clip_jax.weights.text_encoder import load_text_encoder_params

    text_only = not params_io.is_params_dir(path) and hf.is_text_only(
        readers.read_checkpoint(path).state_dict
    )
    if text_only:
        text_cfg, params = load_text_encoder_params(path, name, quick_gelu)
        out = export_hf_text_encoder(params, text_cfg, output, force=force)
        return out, text_config_to_hf(text_cfg)["architectures"][0]
    cfg, params = load.load_params_checked(path, name, quick_gelu)
    if cfg.family == "siglip":
        return _export_siglip(params, cfg, path, output, force), "SiglipModel"
    return export_hf(params, cfg, output, force=force), "CLIPModel"


def _export_siglip(params: dict, cfg: CLIPConfig, source: str | os.PathLike, output, force: bool) -> Path:
    """A SigLIP as a SiglipModel directory, with the tokenizer files of the checkpoint it came from. A
    source without them (an open_clip file, a big_vision .npz) is refused before anything is written, naming
    the files to put beside it: a SiglipModel directory without its sentencepiece model cannot tokenize."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    if not any((folder / n).is_file() for n in ("spiece.model", "tokenizer.model")):
        raise FileNotFoundError(
            f"{source}: no spiece.model (SigLIP) or tokenizer.model (SigLIP 2) in {folder}: put the model's "
            "sentencepiece file there (from its HF repository) so the exported directory can tokenize"
        )
    directory = _prepare(output, force)
    return hf.export_siglip_hf(params, cfg, directory, tokenizer_dir=folder)
