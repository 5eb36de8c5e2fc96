"""Convert a CLIP checkpoint (OpenAI, open_clip, HF, or a clip_jax params dir) into clip_jax or open_clip form.

    python -m clip_jax.convert --input ViT-B-32.pt --output ckpt/vit-b-32           # orbax params dir
    python -m clip_jax.convert --input open_clip_model.safetensors --model ViT-B-32 \
        --output vit-b-32.safetensors                                              # open_clip safetensors

The config (named, or read/inferred from the checkpoint) is checked against every key and shape before
anything is written; one summary line is printed at the end.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from clip_jax.models.config import MODEL_CONFIGS, CLIPConfig
from clip_jax.weights import export_open_clip, load_params_checked, save_params


def describe(cfg: CLIPConfig) -> str:
    """The model's name if it is a named config, else a short description of its sizes."""
    for name, named in MODEL_CONFIGS.items():
        if named == cfg:
            return name
    v, t = cfg.vision, cfg.text
    act = "quickgelu" if cfg.quick_gelu else "gelu"
    return (
        f"custom(vision {v.layers}x{v.width} p{v.patch_size}@{v.image_size}, "
        f"text {t.layers}x{t.width}, embed {cfg.embed_dim}, {act})"
    )


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="checkpoint file or directory")
    parser.add_argument("--model", default=None, help="model name to check against (default: infer)")
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="QuickGELU (OpenAI weights) or GELU (open_clip's own); needed when the model is not named",
    )
    parser.add_argument("--output", required=True, help="orbax params directory or .safetensors file")
    parser.add_argument(
        "--format",
        choices=("orbax", "safetensors"),
        default=None,
        help="output format (default: safetensors for a .safetensors output, else orbax)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing orbax checkpoint")
    args = parser.parse_args(argv)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "orbax")
    cfg, params = load_params_checked(args.input, args.model, args.quick_gelu, param_dtype=np.float32)
    if fmt == "safetensors":
        out = export_open_clip(params, cfg, args.output)
    else:
        out = save_params(args.output, params, cfg, force=args.force)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    print(f"converted {args.input}: model {describe(cfg)}, {count:,} params -> {out} ({fmt})")
    return out


if __name__ == "__main__":
    main()
