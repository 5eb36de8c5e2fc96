"""Reproduce the CLIP paper's ImageNet tables for given weight files: zero-shot accuracy on ImageNet and its
distribution shifts, the effective-robustness plot, and linear probes; then the tables beside the paper's.

    python experiments/reproduce_clip.py \\
        --weights ViT-B-32-quickgelu=ViT-B-32.pt --weights ViT-L-14-336-quickgelu=ViT-L-14-336px.pt \\
        --weights RN50-quickgelu=RN50.pt \\
        --data-dir ~/tensorflow_datasets --objectnet-dir ~/objectnet-1.0 --output-dir results/clip

SigLIP and SigLIP 2 (their named configs; HF directories, open_clip files or big_vision .npz):

    python experiments/reproduce_clip.py --tasks zeroshot --data-dir ~/tensorflow_datasets \
        --weights ViT-B-16-SigLIP=siglip-base-patch16-224 --weights ViT-L-16-SigLIP-256=siglip-large-patch16-256 \
        --weights ViT-SO400M-14-SigLIP=webli_en_so400m_224_57633886.npz \
        --weights ViT-B-16-SigLIP2=siglip2-base-patch16-224 --weights ViT-SO400M-14-SigLIP2=siglip2_so400m14_224.npz

Each model is evaluated as its authors evaluated it, unless --transform / --templates say otherwise: CLIP
with OpenAI's transform and 80 templates, SigLIP with big_vision's transform and prompts (its inputs,
clip_jax.inputs). Each --weights is MODEL=PATH (any format clip_jax.load_pretrained reads; OpenAI's .pt
files are QuickGELU models, hence the -quickgelu names; the ResNets too, RN50-quickgelu ...), or
MODEL=random for a smoke run. The published column holds the CLIP paper's numbers (for RN50 and RN101
open_clip's evaluation of OpenAI's weights) and SigLIP 2's from big_vision's README_siglip2.md; SigLIP's
own rows are listed empty, as no source holding them could be fetched (published_clip_numbers.json says
which). Datasets that are not prepared in the
TFDS data dir are skipped with a message. Batches are split over all local devices. Writes, under
--output-dir: <model>/zeroshot.json (with each shift's effective robustness), <model>/linear_probe_<dataset>
.json, effective_robustness.png (beside the ImageNet models' fitted baseline), tables.md and tables.csv; classifier weights and image features are cached in cache/ so a rerun after an
interruption skips what is done.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from clip_jax.eval import cli, metadata, results
from clip_jax.eval.cache import slug
from clip_jax.eval.linear_probe import LinearProbe
from clip_jax.eval.robustness import Robustness, plot_point, plot_with_baseline, report_records
from clip_jax.weights.identify import pretrained_tag

HERE = Path(__file__).resolve().parent


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def _model_args(base: argparse.Namespace, spec: str) -> argparse.Namespace:
    name, sep, path = spec.partition("=")
    if not sep:
        raise SystemExit(f"--weights takes MODEL=PATH or MODEL=random, got {spec!r}")
    args = argparse.Namespace(**vars(base))
    args.model, args.weights, args.checkpoint = name, (None if path == "random" else path), None
    args.pretrained = "random" if path == "random" else pretrained_tag(path)
    return args


def _make_tables():
    """experiments/make_tables.py as a module (experiments/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_tables", HERE / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _available(names, fields: dict, image_size: int) -> list[str]:
    """The datasets among `names` that can be read (each skipped one is named, with the reason)."""
    from clip_jax.eval.common import DataConfig
    from clip_jax.eval.datasets import eval_dataset

    data = DataConfig(**{k: v for k, v in fields.items() if k in DataConfig.__dataclass_fields__})
    ok = []
    for name in names:
        try:
            eval_dataset(data, image_size, dataset=name)
            ok.append(name)
        except Exception as e:  # noqa: BLE001 - any reason a dataset cannot be read means: skip it, say why
            _log(f"  skip {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return ok


def run_model(args: argparse.Namespace, out: Path) -> tuple[list[dict], dict | None]:
    """Zero-shot robustness suite and linear probes for one model; returns (records, plot point)."""
    model, params, ident = cli.load_model(args)
    model_dir = out / slug(f"{ident.model}-{ident.pretrained}")
    cache = str(out / "cache")
    fields = cli.data_fields(args)
    size = model.cfg.vision.image_size
    records: list[dict] = []
    point = None
    if "zeroshot" in args.tasks:
        names = _available(("imagenet1k",) + metadata.IMAGENET_SHIFTS, fields, size)
        if names:
            _log(f"{ident.model}: zero-shot on {names}")
            config = fields | {
                "datasets": ",".join(names),
                "templates": args.templates,
                "classifier_cache": cache,
            }
            report = Robustness(config, model, inputs=ident.inputs).run(
                params, checkpoint_id=ident.checkpoint_id
            )
            zs = report_records(
                report, ident.model, ident.pretrained, fields["preprocess"], ident.inputs.transform
            )
            point = plot_point(report, f"{ident.model} ({ident.pretrained})")
            if jax.process_index() == 0:
                results.write_records(model_dir / "zeroshot.json", zs)
            records += zs
    if "linear_probe" in args.tasks:
        for name in args.linear_probe_datasets:
            spec = metadata.get_dataset(name)
            if not _available([name], fields | {"split": args.linear_probe_train_split}, size):
                continue
            config = fields | {
                "dataset": name,
                "train_split": args.linear_probe_train_split,
                "C": args.C,
                "feature_cache": cache,
            }
            _log(f"{ident.model}: linear probe on {spec.name}")
            metrics = LinearProbe(config, model, inputs=ident.inputs).run(
                params, checkpoint_id=ident.checkpoint_id
            )
            note = results.preprocess_note(fields["preprocess"], ident.inputs.transform)
            record = results.make_record(
                spec.name, ident.model, ident.pretrained, "linear_probe", metrics, preprocess=note
            )
            if jax.process_index() == 0:
                results.write_records(model_dir / f"linear_probe_{spec.name}.json", record)
            records.append(record)
    return records, point


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", required=True, help="MODEL=PATH or MODEL=random")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--objectnet-dir", default=None)
    parser.add_argument("--output-dir", default="results/clip")
    parser.add_argument("--tasks", default="zeroshot,linear_probe")
    parser.add_argument(
        "--templates",
        default=None,
        help="the model's own (default), openai (80), simple (7) or a JSON list file",
    )
    cli.add_transform_arg(parser)
    parser.add_argument("--linear-probe-datasets", default="imagenet1k")
    parser.add_argument("--linear-probe-train-split", default="train")
    parser.add_argument("--C", type=float, default=None, help="fixed C for the probes (default: sweep)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--preprocess", choices=("pil", "tf"), default="pil", help="pil: exact (default)")
    parser.add_argument("--max-batches", type=int, default=None, help="cap per dataset (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--published", default=str(metadata.PUBLISHED_NUMBERS))
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.linear_probe_datasets = [d.strip() for d in args.linear_probe_datasets.split(",") if d.strip()]
    base = argparse.Namespace(**vars(args), quick_gelu=None, task=None, split=None)
    _log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, processes: {jax.process_count()}")

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, points = [], []
    for spec in args.weights:
        recs, point = run_model(_model_args(base, spec), out)
        records += recs
        if point is not None:
            points.append(point)
    if jax.process_index() == 0 and records:
        tables = _make_tables()
        published = json.loads(Path(args.published).read_text()) if os.path.exists(args.published) else {}
        rows = tables.table_rows(records, published)
        (out / "tables.md").write_text(tables.to_markdown(rows))
        (out / "tables.csv").write_text(tables.to_csv(rows))
        if points:
            plot_with_baseline(points, out / "effective_robustness.png", args.published)
        _log(
            f"wrote {out / 'tables.md'}, {out / 'tables.csv'}"
            + (", effective_robustness.png" if points else "")
        )
    return records


if __name__ == "__main__":
    main()
