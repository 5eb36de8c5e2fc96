"""Distribution-shift robustness: zero-shot accuracy on ImageNet and its shifted test sets, their average,
and an effective-robustness plot (Taori et al. 2020; CLIP paper Fig. 13).

One ImageNet classifier (1000 classes, 80 templates) scores every set. ImageNet-R and ImageNet-A have 200
classes each, whose TFDS labels live in the 1000-class space: the head keeps only those 200 outputs.
ObjectNet (read from a local folder, it is not in TFDS) is scored on its 113 classes that overlap ImageNet,
each the set of ImageNet classes it maps to, so a prediction of any of them counts.

Library use, for any list of (name, dataset) pairs, the first being the reference distribution:
    report = robustness_eval(model, params, [("test", ds), ("sketch", ds2)], classnames=..., templates=...)

    python -m clip_jax.eval.robustness --model ViT-B-32-quickgelu --weights ViT-B-32.pt \
        --data-dir ~/tensorflow_datasets --objectnet-dir ~/objectnet-1.0 --output rob.json --plot rob.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.eval import features as F
from clip_jax.eval import metadata
from clip_jax.eval.zeroshot import (
    Head,
    build_zeroshot_classifier,
    check_classifier,
    evaluate_logits,
    head_for,
    logits_encoder,
)
from clip_jax.models.clip import CLIP

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPEG", ".JPG", ".PNG")
# ObjectNet images carry a 1-pixel red border; the standard protocol crops 2 pixels off each side.
OBJECTNET_BORDER = 2


def objectnet_files(root: str | Path) -> list[tuple[Path, int]]:
    """(image path, ObjectNet class index) for the 113 ImageNet-overlapping classes, sorted."""
    root = Path(root)
    images = root / "images" if (root / "images").is_dir() else root
    out = []
    for label, cls in enumerate(metadata.objectnet_classes()):
        folder = images / cls["folder"]
        if folder.is_dir():
            out.extend((p, label) for p in sorted(folder.iterdir()) if p.suffix in IMAGE_SUFFIXES)
    if not out:
        raise FileNotFoundError(f"no ObjectNet class folders (e.g. {images / 'alarm_clock'}) found")
    return out


def _load_objectnet_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import ImageOps

    from clip_jax.preprocess import load_image, preprocess_image

    image = load_image(path)
    image = ImageOps.crop(image.convert("RGB"), border=OBJECTNET_BORDER)
    return preprocess_image(image, image_size)


def objectnet_dataset(
    root: str | Path,
    *,
    batch_size: int,
    image_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 8,
) -> Iterator[dict[str, np.ndarray]]:
    """ObjectNet batches {"image", "label" (0..112, in objectnet.json's order), "mask"} from a local folder.

    `batch_size` is global, as in `clip_jax.data.make_eval_dataset`: each process reads every
    process_count-th file into batches of batch_size / process_count; all processes yield the same number
    of batches, the last ones padded with mask 0.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
    batch_size //= process_count
    files = objectnet_files(root)
    mine = files[process_index::process_count]
    per_process = math.ceil(len(files) / process_count)
    num_batches = math.ceil(per_process / batch_size)
    with ThreadPoolExecutor(num_threads) as pool:
        for b in range(num_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            images = np.zeros((batch_size, image_size, image_size, 3), np.float32)
            labels = np.zeros(batch_size, np.int32)
            mask = np.zeros(batch_size, np.int32)
            for i, img in enumerate(pool.map(lambda f: _load_objectnet_image(f[0], image_size), chunk)):
                images[i] = img
                labels[i] = chunk[i][1]
                mask[i] = 1
            yield {"image": images, "label": labels, "mask": mask}


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
    datasets: Sequence[tuple[str, Iterable[F.Batch]]],
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
    mesh = F.default_mesh() if mesh is None else mesh
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


def default_published_path() -> Path:
    return Path(__file__).resolve().parents[2] / "experiments" / "published_clip_numbers.json"


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
    parser.add_argument("--published", default=str(default_published_path()))
    args = parser.parse_args(argv)

    model, params, ident = cli.load_model(args)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if "objectnet" in names and not args.objectnet_dir:
        print("no --objectnet-dir: skipping objectnet")
        names.remove("objectnet")
    specs = [metadata.get_dataset(n) for n in names]
    classnames, templates = metadata.classnames_and_templates(specs[0].name, args.task)
    templates = cli.choose_templates(args.templates, specs[0], templates)
    classifier = build_zeroshot_classifier(
        model,
        params,
        classnames,
        templates,
        cache_dir=args.classifier_cache,
        checkpoint_id=ident.checkpoint_id,
        progress=True,
    )
    report = robustness_eval(
        model,
        params,
        [(s.name, cli.make_dataset(s, args, model)) for s in specs],
        classifier=classifier,
        max_batches=args.max_batches,
        progress=True,
    )
    records = [
        results.make_record(n, ident.model, ident.pretrained, "zeroshot_classification", m)
        for n, m in report["datasets"].items()
    ]
    summary = {
        "reference": report["reference"],
        "reference_acc1": report["reference_acc1"],
        "average_shift_acc1": report["average_shift_acc1"],
    }
    records.append(
        results.make_record(
            "imagenet_shift_average",
            ident.model,
            ident.pretrained,
            "zeroshot_classification",
            {"acc1": report["average_shift_acc1"]},
            shifts=[n for n in report["datasets"] if n != report["reference"]],
        )
    )
    if jax.process_index() == 0:
        if args.output:
            results.write_records(args.output, records)
        print(json.dumps(summary | {n: m["acc1"] for n, m in report["datasets"].items()}))
        if args.plot and report["average_shift_acc1"] is not None:
            pts = published_points(args.published) if Path(args.published).exists() else []
            pts.append(
                {
                    "label": f"{ident.model} ({ident.pretrained})",
                    "x": report["reference_acc1"],
                    "y": report["average_shift_acc1"],
                    "kind": "ours",
                }
            )
            plot_effective_robustness(pts, args.plot)
    return records


if __name__ == "__main__":
    main()
