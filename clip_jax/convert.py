"""Convert a CLIP checkpoint (OpenAI, open_clip, HF, a clip_jax params dir or training run) to clip_jax or open_clip.

    python -m clip_jax.convert --input ViT-B-32.pt --output ckpt/vit-b-32           # orbax params dir
    python -m clip_jax.convert --input open_clip_model.safetensors --model ViT-B-32 \
        --output vit-b-32.safetensors                                              # open_clip safetensors
    python -m clip_jax.convert --checkpoint runs/synthetic_tiny --output tiny.safetensors   # a training run
    python -m clip_jax.convert --checkpoint runs/synthetic_tiny --ema --output tiny_ema.safetensors  # its EMA

The config (named, or read/inferred from the checkpoint) is checked against every key and shape before
anything is written; one summary line is printed at the end.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from clip_jax.cli_errors import UserError, one_line, run_cli
from clip_jax.models.config import describe, get_model_config
from clip_jax.weights import export_open_clip, load_params_checked, params_io, save_params, training_run
from clip_jax.weights.hf_export import convert_to_hf


def check_output(output: str, fmt: str, force: bool) -> None:
    """Refuse an `--output` that cannot be written, before the input is read, naming it as given: a
    file is created and removed in its nearest existing folder (permission bits say nothing for root,
    or on /proc), and an orbax checkpoint already there needs --force."""
    path = Path(output).absolute()
    folder = next(p for p in (path, *path.parents) if p.exists())
    if folder.is_file() and folder != path:
        raise UserError(f"--output {output}: {folder} is a file, not a folder")
    if folder == path and not path.is_dir():
        folder = path.parent
    if fmt == "orbax" and (path / params_io.PARAMS_DIR).exists() and not force:
        raise UserError(f"--output {output} already holds a params checkpoint: pass --force to overwrite it")
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"--output {output}: cannot write in {folder} ({e.strerror or e})") from None


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        "--checkpoint",
        required=True,
        help="checkpoint file or directory, or a training run: its workdir, checkpoints/ or a step "
        "folder (the model is read from the workdir's config.json)",
    )
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
        choices=("orbax", "safetensors", "hf"),
        default=None,
        help="output format (default: safetensors for a .safetensors output, else orbax); hf: a transformers "
        "directory (CLIPModel, SiglipModel, or CLIPTextModel[WithProjection] for a text-only input) with "
        "tokenizer files",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing orbax checkpoint")
    parser.add_argument(
        "--ema", action="store_true", help="a training run's EMA params (trained with config.ema_decay)"
    )
    args = parser.parse_args(argv)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "orbax")
    if args.model is not None:
        try:
            get_model_config(args.model)
        except ValueError as e:
            raise UserError(f"--model: {e}") from None
    check_output(args.output, fmt, args.force)
    if args.ema and fmt == "hf":
        raise UserError("--ema with --format hf: convert the EMA to safetensors or orbax, then that to hf")
    if args.ema and not training_run.is_training_run(args.input):
        raise UserError(f"--ema: {args.input} is not a clip_jax training run (only runs keep EMA params)")
    if fmt == "hf":
        out, architecture = convert_to_hf(
            args.input, args.output, args.model, args.quick_gelu, force=args.force
        )
        print(f"converted {args.input}: {architecture} -> {out} (hf)")
        return out
    if args.ema:
        cfg, params, _ = training_run.load_training_run(args.input, args.model, args.quick_gelu, ema=True)
    else:
        cfg, params = load_params_checked(args.input, args.model, args.quick_gelu, param_dtype=np.float32)
    try:
        if fmt == "safetensors":
            out = export_open_clip(params, cfg, args.output)
        else:
            out = save_params(args.output, params, cfg, force=args.force)
    except OSError as e:  # e.g. the disk filled up, or the folder went away, after check_output
        raise UserError(f"--output {args.output}: {one_line(e)}") from e
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    print(f"converted {args.input}: model {describe(cfg)}, {count:,} params -> {out} ({fmt})")
    return out


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "clip_jax.convert"))
