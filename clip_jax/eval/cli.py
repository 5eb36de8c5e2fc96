"""Command-line plumbing shared by the evaluation scripts: model loading, datasets, result files."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.eval import results
from clip_jax.eval.metadata import SYNTHETIC_DEFAULT_TASK, DatasetSpec, imagenet_templates
from clip_jax.models import CLIP, get_model_config, init_params, unstack_layers


@dataclasses.dataclass(frozen=True)
class ModelIdent:
    """What a result record says about the model, and what cache keys are derived from."""

    model: str
    pretrained: str
    checkpoint_id: str


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model name, e.g. ViT-B-32-quickgelu (OpenAI weights)")
    parser.add_argument(
        "--weights",
        default=None,
        help="OpenAI .pt, open_clip .safetensors/.bin, HF folder, "
        "or a clip_jax params folder; without it (and --checkpoint) the model is random",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a clip_jax params folder or a training workdir / "
        "orbax checkpoint folder (the latest step is used; --model is required)",
    )
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation of an open_clip file given without --model",
    )
    parser.add_argument(
        "--pretrained", default=None, help="tag for result records (default: weights file name)"
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data dir")
    parser.add_argument("--objectnet-dir", default=None, help="ObjectNet root (holding images/<class>/...)")
    parser.add_argument(
        "--task", default=None, help=f"label of clip_synthetic (default {SYNTHETIC_DEFAULT_TASK})"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--max-batches", type=int, default=None, help="stop after this many batches (smoke tests)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the CLIP_benchmark record(s)")


def slug(text: str) -> str:
    """A file-name-safe version of text."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:150]


def _file_id(path: str) -> str:
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def load_model(args: argparse.Namespace) -> tuple[CLIP, Any, ModelIdent]:
    """(model, params, identity) from --weights / --checkpoint, or a random model from --model and --seed."""
    if args.weights and args.checkpoint:
        raise SystemExit("pass either --weights or --checkpoint, not both")
    source = args.weights or args.checkpoint
    if source is None:
        if args.model is None:
            raise SystemExit("pass --weights/--checkpoint, or --model for a randomly initialised model")
        model = CLIP(get_model_config(args.model))
        params = random_params(model, args.seed)
        tag = args.pretrained or "random"
        return model, params, ModelIdent(args.model, tag, f"{args.model}:random:{args.seed}")
    from clip_jax.weights import params_io

    if args.checkpoint and not params_io.is_params_dir(args.checkpoint):
        if args.model is None:
            raise SystemExit("--model is required with a training checkpoint")
        model = CLIP(get_model_config(args.model))
        params, step_dir = load_train_checkpoint(args.checkpoint)
        tag = args.pretrained or f"{Path(args.checkpoint).name}@{step_dir.name}"
        return model, params, ModelIdent(args.model, tag, f"{step_dir.resolve()}")
    from clip_jax.weights import load_pretrained

    model, params = load_pretrained(args.model, source, quick_gelu=args.quick_gelu)
    name = args.model or _config_name(model)
    tag = args.pretrained or default_pretrained_tag(source)
    return model, params, ModelIdent(name, tag, _file_id(source) if Path(source).is_file() else str(source))


def default_pretrained_tag(path: str | os.PathLike) -> str:
    """'openai' for OpenAI's released TorchScript files (so tables match the paper's numbers), else the
    file or folder name."""
    from clip_jax.weights.readers import is_torchscript

    p = Path(path)
    return "openai" if p.is_file() and is_torchscript(p) else p.stem


def random_params(model: CLIP, seed: int = 0, std: float = 0.02) -> dict:
    """Random params for smoke tests, drawn with numpy in the shapes of `init_params`.

    Not CLIP's initialisation (LayerNorm scales are 1, biases 0, everything else N(0, std^2)), but built
    without compiling the model's init, which takes a minute on a small CPU even for the tiny model.
    """
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("['bias']"):
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith("['logit_scale']"):
            return np.full(leaf.shape, np.log(1 / 0.07), leaf.dtype)
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _config_name(model: CLIP) -> str:
    from clip_jax.models import MODEL_CONFIGS

    for name, cfg in MODEL_CONFIGS.items():
        if cfg == model.cfg:
            return name
    return "custom"


def load_train_checkpoint(path: str | os.PathLike) -> tuple[dict, Path]:
    """The params of the latest step of a training run's orbax checkpoints (per-layer layout)."""
    import orbax.checkpoint as ocp

    root = Path(path)
    for candidate in (root, root / "checkpoints"):
        steps = sorted(
            (p for p in candidate.glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        if steps:
            step_dir = steps[-1]
            break
    else:
        raise SystemExit(f"no orbax step folders under {root} or {root / 'checkpoints'}")
    item = step_dir / "state" if (step_dir / "state").exists() else step_dir
    state = ocp.StandardCheckpointer().restore(item)
    params = state["params"] if "params" in state else state
    params = jax.tree.map(np.asarray, params)
    return unstack_layers(params), step_dir


def make_dataset(
    spec: DatasetSpec, args: argparse.Namespace, model: CLIP, split: str | None = None
) -> Iterable:
    """Eval batches of a registered dataset at the model's image size, sharded over processes.

    --batch-size is global: each process reads batch_size / process_count images per batch.
    """
    image_size = model.cfg.vision.image_size
    split = split or getattr(args, "split", None) or spec.split
    if spec.head == "objectnet":
        from clip_jax.eval.robustness import objectnet_dataset

        if not args.objectnet_dir:
            raise SystemExit("ObjectNet is read from a local folder: pass --objectnet-dir")
        return objectnet_dataset(args.objectnet_dir, batch_size=args.batch_size, image_size=image_size)
    from clip_jax.data import make_eval_dataset

    # clip_synthetic has several label features; --task names the one to score.
    label_key = (args.task or SYNTHETIC_DEFAULT_TASK) if spec.classes == "clip_synthetic" else "label"
    return make_eval_dataset(
        spec.tfds_name,
        split,
        batch_size=args.batch_size,
        image_size=image_size,
        data_dir=args.data_dir,
        label_key=label_key,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def add_template_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        default=None,
        help="prompt templates: the dataset's own (default), 'openai' (80) or 'simple' (7) for ImageNet "
        "sets, or a JSON file holding a list of templates with '{}'",
    )


def choose_templates(arg: str | None, spec: DatasetSpec, default: list[str]) -> list[str]:
    """The templates named by --templates for a dataset whose own templates are `default`."""
    if arg is None:
        return default
    if arg in ("openai", "simple"):
        if spec.classes != "imagenet":
            raise SystemExit(f"--templates {arg} is an ImageNet template set; {spec.name} has its own")
        return imagenet_templates(arg)
    path = Path(arg)
    if not path.is_file():
        raise SystemExit(f"--templates must be openai, simple or a JSON file; {arg!r} is none of these")
    templates = json.loads(path.read_text())
    if not (isinstance(templates, list) and templates and all("{}" in t for t in templates)):
        raise SystemExit(f"{arg} must hold a non-empty JSON list of templates, each with '{{}}'")
    return templates


def write_result(
    args: argparse.Namespace, ident: ModelIdent, dataset: str, task: str, metrics: dict, **extra: Any
) -> dict:
    """Make the record, write it to --output (process 0) and print it."""
    record = results.make_record(dataset, ident.model, ident.pretrained, task, metrics, **extra)
    if jax.process_index() == 0:
        if args.output:
            results.write_records(args.output, record)
        print(json.dumps({k: v for k, v in record.items() if k != "metrics"} | {"metrics": _short(metrics)}))
    return record


def _short(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
