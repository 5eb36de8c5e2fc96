"""Reproduce the CLIP paper's ImageNet tables for given weight files: zero-shot accuracy on ImageNet and its
distribution shifts, the effective-robustness plot, and linear probes; then the tables beside the paper's.

    python experiments/reproduce_clip.py \\
        --weights ViT-B-32-quickgelu=ViT-B-32.pt --weights ViT-L-14-336-quickgelu=ViT-L-14-336px.pt \\
        --data-dir ~/tensorflow_datasets --objectnet-dir ~/objectnet-1.0 --output-dir results/clip

Each --weights is MODEL=PATH (any format clip_jax.load_pretrained reads; OpenAI's .pt files are QuickGELU
models, hence the -quickgelu names), or MODEL=random for a smoke run. Datasets that are not prepared in the
TFDS data dir are skipped with a message. Batches are split over all local devices. Writes, under
--output-dir: <model>/zeroshot.json, <model>/linear_probe_<dataset>.json, effective_robustness.png,
tables.md and tables.csv; classifier weights and image features are cached in cache/ so a rerun after an
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

from clip_jax.eval import cli, features, metadata, results
from clip_jax.eval.linear_probe import linear_probe
from clip_jax.eval.robustness import plot_effective_robustness, published_points, robustness_eval
from clip_jax.eval.zeroshot import build_zeroshot_classifier

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
    args.pretrained = "random" if path == "random" else cli.default_pretrained_tag(path)
    return args


def _make_tables():
    """experiments/make_tables.py as a module (experiments/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_tables", HERE / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dataset_or_none(spec: metadata.DatasetSpec, args: argparse.Namespace, model, split: str | None = None):
    """The dataset, or None (with a message) when it is not available."""
    if spec.head == "objectnet" and not args.objectnet_dir:
        _log(f"  skip {spec.name}: no --objectnet-dir")
        return None
    try:
        return cli.make_dataset(spec, args, model, split=split)
    except Exception as e:  # noqa: BLE001 - any reason a dataset cannot be read means: skip it, say why
        _log(f"  skip {spec.name}/{split or spec.split}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None


def run_model(args: argparse.Namespace, out: Path) -> tuple[list[dict], dict | None]:
    """Zero-shot robustness suite and linear probes for one model; returns (records, plot point)."""
    model, params, ident = cli.load_model(args)
    model_dir = out / cli.slug(f"{ident.model}-{ident.pretrained}")
    cache = out / "cache"
    records: list[dict] = []
    point = None
    if "zeroshot" in args.tasks:
        names = ("imagenet1k",) + metadata.IMAGENET_SHIFTS
        pairs = [
            (s.name, ds) for s in map(metadata.get_dataset, names) if (ds := _dataset_or_none(s, args, model))
        ]
        if pairs:
            _log(f"{ident.model}: zero-shot on {[n for n, _ in pairs]}")
            classifier = build_zeroshot_classifier(
                model,
                params,
                metadata.imagenet_classnames(),
                cli.choose_templates(args.templates, metadata.get_dataset("imagenet1k"), []),
                cache_dir=cache,
                checkpoint_id=ident.checkpoint_id,
                progress=True,
            )
            report = robustness_eval(
                model,
                params,
                pairs,
                classifier=classifier,
                reference=pairs[0][0],
                max_batches=args.max_batches,
                progress=True,
            )
            zs = [
                results.make_record(n, ident.model, ident.pretrained, "zeroshot_classification", m)
                for n, m in report["datasets"].items()
            ]
            if report["average_shift_acc1"] is not None:
                shifts = [n for n in report["datasets"] if n != report["reference"]]
                zs.append(
                    results.make_record(
                        "imagenet_shift_average",
                        ident.model,
                        ident.pretrained,
                        "zeroshot_classification",
                        {"acc1": report["average_shift_acc1"]},
                        shifts=shifts,
                    )
                )
                point = {
                    "label": f"{ident.model} ({ident.pretrained})",
                    "x": report["reference_acc1"],
                    "y": report["average_shift_acc1"],
                    "kind": "ours",
                }
            if jax.process_index() == 0:
                results.write_records(model_dir / "zeroshot.json", zs)
            records += zs
    if "linear_probe" in args.tasks:
        for name in args.linear_probe_datasets:
            spec = metadata.get_dataset(name)
            record = _linear_probe(args, spec, model, params, ident, cache)
            if record is not None:
                if jax.process_index() == 0:
                    results.write_records(model_dir / f"linear_probe_{spec.name}.json", record)
                records.append(record)
    return records, point


def _linear_probe(args, spec, model, params, ident, cache: Path) -> dict | None:
    splits = {}
    for split in (args.linear_probe_train_split, spec.split):
        path = cache / f"{cli.slug(f'{ident.checkpoint_id}-{spec.name}-{split}')}.npz"
        if path.exists():
            splits[split] = features.cached_features(path, lambda: None)
            continue
        ds = _dataset_or_none(spec, args, model, split=split)
        if ds is None:
            return None
        _log(f"{ident.model}: image features of {spec.name}/{split}")
        splits[split] = features.cached_features(
            path,
            lambda ds=ds, split=split: features.extract_image_features(
                model,
                params,
                ds,
                normalize=False,
                max_batches=args.max_batches,
                progress=f"{spec.name}/{split}",
            ),
        )
    (xtr, ytr), (xte, yte) = splits[args.linear_probe_train_split], splits[spec.split]
    _log(f"{ident.model}: linear probe on {spec.name} ({len(ytr)} train / {len(yte)} test)")
    num_classes = (
        len(metadata.classnames_and_templates(spec.name)[0]) if spec.classes != "clip_synthetic" else None
    )
    metrics = linear_probe(xtr, ytr, xte, yte, num_classes=num_classes, C=args.C)
    return results.make_record(spec.name, ident.model, ident.pretrained, "linear_probe", metrics)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", required=True, help="MODEL=PATH or MODEL=random")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--objectnet-dir", default=None)
    parser.add_argument("--output-dir", default="results/clip")
    parser.add_argument("--tasks", default="zeroshot,linear_probe")
    parser.add_argument("--templates", default="openai", help="openai (80), simple (7) or a JSON list file")
    parser.add_argument("--linear-probe-datasets", default="imagenet1k")
    parser.add_argument("--linear-probe-train-split", default="train")
    parser.add_argument("--C", type=float, default=None, help="fixed C for the probes (default: sweep)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batches", type=int, default=None, help="cap per dataset (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--published", default=str(HERE / "published_clip_numbers.json"))
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
            paper = published_points(args.published) if os.path.exists(args.published) else []
            plot_effective_robustness(paper + points, out / "effective_robustness.png")
        _log(
            f"wrote {out / 'tables.md'}, {out / 'tables.csv'}"
            + (", effective_robustness.png" if points else "")
        )
    return records


if __name__ == "__main__":
    main()
