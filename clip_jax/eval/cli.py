"""Command-line plumbing shared by the evaluation scripts: the common flags, model loading, and result
files. The scripts are thin: flags -> an evaluator's config (`clip_jax.eval.common`) -> run -> record."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import jax

from clip_jax.cli_errors import UserError
from clip_jax.eval import results
from clip_jax.eval.common import Evaluator
from clip_jax.eval.metadata import SYNTHETIC_DEFAULT_TASK
from clip_jax.inputs import ModelInputs, model_inputs
from clip_jax.models import CLIP, get_model_config, random_params
from clip_jax.models.config import config_name
from clip_jax.preprocess import NAMED_TRANSFORMS

E = TypeVar("E", bound=Evaluator)


@dataclasses.dataclass(frozen=True)
class ModelIdent:
    """What a result record says about the model, and what cache keys are derived from."""

    model: str
    pretrained: str
    checkpoint_id: str
    # The eval transform and tokenizer its weights were trained with (`clip_jax.inputs.model_inputs`).
    inputs: ModelInputs = ModelInputs()


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
        help="a training run: its workdir, checkpoints/ or one step folder (the newest complete step; "
        "the model is read from the workdir's config.json), or a clip_jax params folder",
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
    parser.add_argument(
        "--preprocess",
        choices=("pil", "tf"),
        default="pil",
        help="pil: batches bit-equal with open_clip's preprocess (default); tf: faster tf.image path, "
        "within the gap the record states",
    )
    add_transform_arg(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the CLIP_benchmark record(s)")


def add_transform_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transform",
        choices=tuple(NAMED_TRANSFORMS),
        default=None,
        help="eval image transform (default: the model's own, the one its published numbers were made "
        "with: openai for CLIP, siglip-bigvision for SigLIP; docs/preprocessing.md)",
    )


def chosen_inputs(args: argparse.Namespace, inputs: ModelInputs) -> ModelInputs:
    """The model's inputs with the transform --transform names, if it names one."""
    name = getattr(args, "transform", None)
    return inputs if name is None else dataclasses.replace(inputs, transform=NAMED_TRANSFORMS[name])


def _file_id(path: str) -> str:
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def check_flags(args: argparse.Namespace) -> None:
    """The errors that need neither weights nor data, raised before either is read (a typo costs no
    load). The dataset checks (`clip_jax.eval.datasets`: is the data there?) go here too, for the same
    reason."""
    if args.weights and args.checkpoint:
        raise UserError("pass either --weights or --checkpoint, not both")
    if not (args.weights or args.checkpoint or args.model):
        raise UserError("pass --weights or --checkpoint, or --model for a randomly initialised model")
    if args.model is not None:
        try:
            get_model_config(args.model)
        except ValueError as e:
            raise UserError(f"--model: {e}") from None
    from clip_jax.eval.datasets import check_cli_data

    check_cli_data(args)


def load_model(args: argparse.Namespace) -> tuple[CLIP, Any, ModelIdent]:
    """(model, params, identity) from --weights / --checkpoint (a weights file or folder, or a training
    run: its workdir, checkpoints/ or a step folder, the model read from its config.json), or a random
    model from --model and --seed."""
    check_flags(args)
    source = args.weights or args.checkpoint
    flag = "--weights" if args.weights else "--checkpoint"
    if source is None:
        model = CLIP(get_model_config(args.model))
        params = random_params(model, args.seed)
        tag = args.pretrained or "random"
        inputs = chosen_inputs(args, model_inputs(model.cfg))
        ident = ModelIdent(args.model, tag, f"{args.model}:random:{args.seed}", inputs)
        return model, params, ident
    from clip_jax.weights import training_run

    if training_run.is_training_run(source):
        cfg, params, step_dir = training_run.load_training_run(source, args.model, args.quick_gelu)
        model = CLIP(cfg)
        run = training_run.workdir_of(step_dir)
        print(f"{flag}: step {step_dir.name} of {step_dir.parent}")
        tag = args.pretrained or f"{run.name}@{step_dir.name}"
        name = args.model or config_name(cfg) or "custom"
        # A training run's own: the tokenizer its pipeline used (config.json), the family's transform.
        try:
            inputs = chosen_inputs(args, model_inputs(model.cfg, run))
        except ValueError as e:  # config.tokenizer / init_from moved or gone since training
            raise UserError(f"{flag} {source}: {e}") from e
        return model, params, ModelIdent(name, tag, f"{step_dir.resolve()}", inputs)
    from clip_jax.weights import load_pretrained
    from clip_jax.weights.identify import pretrained_tag

    model, params = load_pretrained(args.model, source, quick_gelu=args.quick_gelu)
    name = args.model or config_name(model.cfg) or "custom"
    tag = args.pretrained or pretrained_tag(source)
    checkpoint_id = _file_id(source) if Path(source).is_file() else str(source)
    try:
        inputs = model_inputs(model.cfg, source)
    except ValueError as e:  # a preprocessor_config.json or tokenizer_config.json it cannot follow
        raise UserError(f"{flag} {source}: {e}") from e
    return model, params, ModelIdent(name, tag, checkpoint_id, chosen_inputs(args, inputs))


def data_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluator config fields (`clip_jax.eval.common.DataConfig`) that the common flags set."""
    return {
        "dataset": getattr(args, "dataset", None) or "",
        "split": getattr(args, "split", None),
        "task": args.task,
        "data_dir": args.data_dir,
        "objectnet_dir": args.objectnet_dir,
        "batch_size": args.batch_size,
        "max_batches": args.max_batches,
        "preprocess": getattr(args, "preprocess", "pil"),
    }


def build(cls: type[E], config: dict[str, Any], model: CLIP, inputs: ModelInputs | None = None) -> E:
    """`cls(config, model, inputs=inputs)` (the model's transform and tokenizer, from `load_model`), a bad
    value becoming an error that names its flag."""
    try:
        return cls(config, model, where="flags", inputs=inputs)
    except ValueError as e:
        # flags.batch_size -> --batch-size, the flag that set the field.
        lines = re.sub(r"flags\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e)).splitlines()
        # TFDS lists every dataset it knows after an unknown name: hundreds of lines, the first says it.
        raise UserError(lines[0] if len(lines) > 3 else " ".join(lines)) from e


def add_template_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--templates",
        default=None,
        help="prompt templates: the dataset's own (default), 'openai' (80) or 'simple' (7) for ImageNet "
        "sets, or a JSON file holding a list of templates with '{}'",
    )


def write_result(
    args: argparse.Namespace, ident: ModelIdent, dataset: str, task: str, metrics: dict, **extra: Any
) -> dict:
    """Make the record (with the input pipeline it used), write it to --output (process 0) and print it."""
    note = results.preprocess_note(getattr(args, "preprocess", "pil"), ident.inputs.transform)
    extra = {"preprocess": note} | extra
    record = results.make_record(dataset, ident.model, ident.pretrained, task, metrics, **extra)
    if jax.process_index() == 0:
        if args.output:
            results.write_records(args.output, record)
        print(json.dumps({k: v for k, v in record.items() if k != "metrics"} | {"metrics": _short(metrics)}))
    return record


def _short(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
