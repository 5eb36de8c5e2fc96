"""Distribution-shift robustness: zero-shot accuracy on ImageNet and its shifted test sets, their average,
and an effective-robustness plot (Taori et al. 2020; CLIP paper Fig. 13).

One ImageNet classifier (1000 classes, 80 templates) scores every set. ImageNet-R and ImageNet-A have 200
classes each, whose TFDS labels live in the 1000-class space: the head keeps only those 200 outputs.
ObjectNet (read from a local folder, it is not in TFDS) is scored on its 113 classes that overlap ImageNet,
each the set of ImageNet classes it maps to, so a prediction of any of them counts.

Library use, for any list of (name, dataset) pairs, the first being the reference distribution:
    report = robustness_eval(model, params, [("test", ds), ("sketch", ds2)], classnames=..., templates=...)
As an evaluator (`config.evals.<name> = {"type": "robustness", "datasets": "imagenet1k,imagenetv2"}`):
    Robustness({"data_dir": ...}, model).run(params)

    python -m clip_jax.eval.robustness --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --data-dir ~/tensorflow_datasets --objectnet-dir ~/objectnet-1.0 --output rob.json --plot rob.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.eval import metadata
from clip_jax.eval.classifier import (
    Head,
    build_zeroshot_classifier,
    check_classifier,
    evaluate_logits,
    head_for,
    logits_encoder,
)
from clip_jax.eval.common import DataConfig, Evaluator
from clip_jax.eval.datasets import eval_dataset
from clip_jax.eval.runtime import Batch, default_mesh
from clip_jax.models.clip import CLIP


def default_head(name: str) -> Head:
    """The head of a registered dataset name, or the identity for other names (e.g. synthetic splits)."""
    try:
        spec = metadata.get_dataset(name)
    except ValueError:
        return Head()
    return head_for(spec.head)


def robustness_eval(
    model: CLIP,
    params: Any,
    datasets: Sequence[tuple[str, Iterable[Batch]]],
    *,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    classifier: np.ndarray | None = None,
    heads: Mapping[str, Head] | None = None,
    reference: str | None = None,
    tokenizer: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot metrics on each (name, dataset), with the mean top-1 of the shifted sets.

    `reference` names the in-distribution set (default: the first); every other set counts as a shift.
    Registered names (imagenet-r, imagenet-a, objectnet) get their class-subset heads unless `heads` says
    otherwise. Returns {"datasets": {name: metrics}, "reference": name, "reference_acc1": ...,
    "average_shift_acc1": ...}.
    """
    if not datasets:
        raise ValueError("no datasets given")
    mesh = default_mesh() if mesh is None else mesh
    if classifier is None:
        if classnames is None or templates is None:
            raise ValueError("pass classnames and templates, or a classifier")
        classifier = build_zeroshot_classifier(
            model, params, classnames, templates, tokenizer=tokenizer, mesh=mesh, progress=progress
        )
    check_classifier(classifier)
    enc = logits_encoder(model, params, mesh)
    clf = jax.numpy.asarray(classifier, jax.numpy.float32)
    reference = reference or datasets[0][0]
    per_dataset = {}
    for name, ds in datasets:
        head = (heads or {}).get(name) or default_head(name)
        per_dataset[name] = evaluate_logits(
            lambda x: enc(x, clf), ds, head, max_batches=max_batches, progress=name if progress else None
        )
    if reference not in per_dataset:
        raise ValueError(f"reference {reference!r} is not among the datasets {list(per_dataset)}")
    shifts = [m["acc1"] for n, m in per_dataset.items() if n != reference]
    return {
        "datasets": per_dataset,
        "reference": reference,
        "reference_acc1": per_dataset[reference]["acc1"],
        "average_shift_acc1": float(np.mean(shifts)) if shifts else None,
    }


def published_points(path: str | Path, task: str = "zeroshot") -> list[dict[str, Any]]:
    """Effective-robustness points (ImageNet acc, mean shift acc; fractions) from published_clip_numbers.json.

    CLIP models contribute their `task` numbers, baselines their supervised ones; a model contributes a
    point only if its ImageNet number and all five shift numbers are published.
    """
    data = json.loads(Path(path).read_text())
    points = []
    for group, key, kind in (
        ("models", task, "CLIP (paper)"),
        ("baselines", "supervised", "ImageNet model (paper)"),
    ):
        for label, entry in data.get(group, {}).items():
            numbers = entry.get(key) or {}
            values = [numbers.get(k) for k in metadata.IMAGENET_SHIFTS]
            if numbers.get("imagenet1k") is None or any(v is None for v in values):
                continue
            points.append(
                {
                    "label": label,
                    "x": numbers["imagenet1k"] / 100,
                    "y": float(np.mean(values)) / 100,
                    "kind": kind,
                }
            )
    return points


def plot_effective_robustness(
    points: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None, logit: bool = True
) -> Path:
    """Scatter of mean shift accuracy against reference accuracy, with y = x (perfect robustness).

    points: [{"label", "x", "y", "kind"}] with accuracies as fractions; kind 'ours' is highlighted. With
    `logit`, both axes are logit-scaled as in Taori et al., where ImageNet models fall on a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    xs = [p["x"] for p in points] + [p["y"] for p in points]
    lo = max(min(xs + [0.2]) * 0.8, 0.01)
    hi = min(max(xs + [0.9]) * 1.05, 0.995)
    line = np.linspace(lo, hi, 100)
    ax.plot(line, line, "k--", lw=1, label="y = x (no drop under shift)")
    markers = {"ours": ("*", 180, "tab:red")}
    for kind in dict.fromkeys(p.get("kind", "ours") for p in points):
        sel = [p for p in points if p.get("kind", "ours") == kind]
        m, s, c = markers.get(kind, ("o", 50, None))
        ax.scatter([p["x"] for p in sel], [p["y"] for p in sel], marker=m, s=s, c=c, label=kind, zorder=3)
        for p in sel:
            ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    if logit:
        ax.set_xscale("logit")
        ax.set_yscale("logit")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("reference (ImageNet) top-1 accuracy")
    ax.set_ylabel("average top-1 accuracy on distribution shifts")
    ax.set_title(title or "Effective robustness")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclasses.dataclass(frozen=True)
class RobustnessConfig(DataConfig):
    """datasets: comma-separated registered names (or a sequence), the first the reference; ObjectNet is
    skipped without objectnet_dir. Or splits: comma-separated splits of `dataset`, the first the reference
    (the synthetic dataset's shifts are splits). templates, classifier_cache: as for zero-shot."""

    datasets: Any = ",".join(("imagenet1k",) + metadata.IMAGENET_SHIFTS)
    splits: Any = None
    templates: str | None = None
    classifier_cache: str | None = None


class Robustness(Evaluator):
    """Zero-shot metrics on a reference dataset and its shifts, with the mean top-1 over the shifts."""

    config_class = RobustnessConfig
    requires_dataset = False

    def __init__(self, config, model: CLIP, *, where: str = "robustness") -> None:
        super().__init__(config, model, where=where)
        c = self.config
        size = model.cfg.vision.image_size
        if c.splits is not None:
            if not c.dataset:
                raise ValueError(f"{where}.splits needs {where}.dataset")
            reference = metadata.get_dataset(c.dataset)
            splits = _names(c.splits, f"{where}.splits")
            self.datasets = [(split, eval_dataset(c, size, split=split)) for split in splits]
            self.heads = {split: head_for(reference.head) for split in splits}
        else:
            names = _names(c.datasets, f"{where}.datasets")
            if "objectnet" in names and not c.objectnet_dir:
                print(f"{where}: no objectnet_dir, skipping objectnet")
                names.remove("objectnet")
            specs = [metadata.get_dataset(n) for n in names]
            reference = specs[0]
            self.datasets = [(s.name, eval_dataset(c, size, dataset=s.name)) for s in specs]
            self.heads = None
        self.classnames, templates = metadata.classnames_and_templates(reference.name, c.task)
        self.templates = metadata.choose_templates(c.templates, reference, templates)

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        classifier = build_zeroshot_classifier(
            self.model,
            params,
            self.classnames,
            self.templates,
            cache_dir=c.classifier_cache if checkpoint_id else None,
            checkpoint_id=checkpoint_id,
            progress=True,
        )
        return robustness_eval(
            self.model,
            params,
            self.datasets,
            classifier=classifier,
            heads=self.heads,
            max_batches=c.max_batches,
            progress=True,
        )


def _names(value: Any, where: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"{where} is empty")
    return names


def report_records(report: Mapping[str, Any], model: str, pretrained: str) -> list[dict]:
    """CLIP_benchmark records of a robustness report: one per dataset, and the shift average."""
    from clip_jax.eval import results

    records = [
        results.make_record(n, model, pretrained, "zeroshot_classification", m)
        for n, m in report["datasets"].items()
    ]
    if report["average_shift_acc1"] is not None:
        records.append(
            results.make_record(
                "imagenet_shift_average",
                model,
                pretrained,
                "zeroshot_classification",
                {"acc1": report["average_shift_acc1"]},
                shifts=[n for n in report["datasets"] if n != report["reference"]],
            )
        )
    return records


def plot_point(report: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    """The report's point on the effective-robustness plot (None without shifts)."""
    if report["average_shift_acc1"] is None:
        return None
    return {"label": label, "x": report["reference_acc1"], "y": report["average_shift_acc1"], "kind": "ours"}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    from clip_jax.eval import cli, results

    parser = argparse.ArgumentParser(description="Zero-shot accuracy under ImageNet distribution shifts.")
    cli.add_common_args(parser)
    parser.add_argument(
        "--datasets",
        default=",".join(("imagenet1k",) + metadata.IMAGENET_SHIFTS),
        help="comma-separated; the first is the reference. ObjectNet needs --objectnet-dir",
    )
    cli.add_template_arg(parser)
    parser.add_argument("--classifier-cache", default=None)
    parser.add_argument("--plot", default=None, help="PNG path for the effective-robustness plot")
    parser.add_argument("--published", default=str(metadata.PUBLISHED_NUMBERS))
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    fields = cli.data_fields(args) | {"templates": args.templates, "classifier_cache": args.classifier_cache}
    evaluator = cli.build(Robustness, fields | {"datasets": args.datasets}, model)
    report = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    records = report_records(report, ident.model, ident.pretrained)
    if jax.process_index() == 0:
        if args.output:
            results.write_records(args.output, records)
        summary = {k: report[k] for k in ("reference", "reference_acc1", "average_shift_acc1")}
        print(json.dumps(summary | {n: m["acc1"] for n, m in report["datasets"].items()}))
        point = plot_point(report, f"{ident.model} ({ident.pretrained})")
        if args.plot and point is not None:
            pts = published_points(args.published) if Path(args.published).exists() else []
            plot_effective_robustness(pts + [point], args.plot)
    return records


if __name__ == "__main__":
    main()
