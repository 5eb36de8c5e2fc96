"""Distribution-shift robustness: zero-shot accuracy on ImageNet and its shifted test sets, their average,
effective robustness against ImageNet models (Taori et al. 2020), and its plot (CLIP paper Fig. 13).

One ImageNet classifier (1000 classes, 80 templates) scores every set. ImageNet-R and ImageNet-A have 200
classes each, whose TFDS labels live in the 1000-class space: the head keeps only those 200 outputs.
ObjectNet (read from a local folder, it is not in TFDS) is scored on its 113 classes that overlap ImageNet,
each the set of ImageNet classes it maps to, so a prediction of any of them counts.

Effective robustness, as Taori et al. define it and their testbed (modestyachts/imagenet-testbed) computes
it: for each shift set, a least-squares line of logit(shift top-1) on logit(reference top-1) over ImageNet
models, and

    ER = shift accuracy - inv_logit(slope * logit(reference accuracy) + intercept)

The reference accuracy is ImageNet top-1, except where the shift set has a class subset: ImageNet-R and
ImageNet-A (200 classes) and ObjectNet (113) are compared with the ImageNet validation top-1 on their
classes, with the same head (the testbed's val-on-*-classes). The evaluator scores those from the same
ImageNet pass. The fit's inputs are metadata/imagenet_testbed_points.json: the testbed's 79 supervised
"Standard training" models (its results table; ResNet-50 left out for ImageNet-A, which was collected
against it), on imagenetv2 (matched frequency), imagenet-r, imagenet_sketch, objectnet and imagenet-a, and
for the average a line of the five-set mean against ImageNet top-1 (the plot's baseline). Fitted lines
(slope, intercept): imagenetv2 0.911, -0.479; imagenet-r 0.631, -2.089; imagenet_sketch 1.065, -2.362;
objectnet 0.970, -1.912; imagenet-a 1.977, -7.633; average 1.030, -1.875. That is the default definition,
"supervised"; "testbed" (the testbed's plotting code: self-supervised models counted, ImageNet-A in two
pieces) and "clip-paper" (Fig. 13's class-subset x-axis for the average) are selectable
(`--effective-robustness`, docs/effective_robustness.md).

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
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clip_jax.cli_errors import UserError
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
from clip_jax.eval.runtime import Batch, batch_mask, default_mesh, gather_processes
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP
from clip_jax.preprocess import EvalTransform

# The in-distribution set whose accuracy the effective-robustness baselines are fitted against.
REFERENCE_DATASET = "imagenet1k"
# Shift sets with a class subset: their baseline's reference is ImageNet scored on their classes.
SUBSET_SHIFTS = {"imagenet-r": "imagenet_r", "imagenet-a": "imagenet_a", "objectnet": "objectnet"}
# Effective robustness as each source defines it (docs/effective_robustness.md; the points JSON's
# "definitions" hold each one's model set and fit parameters). The default keeps clip_jax's first numbers.
DEFINITIONS = ("supervised", "testbed", "clip-paper")
DEFAULT_DEFINITION = "supervised"
# The "average" baseline's reference under the CLIP paper's Fig. 13: the mean over the shift sets of the
# ImageNet accuracy on each one's classes.
CLASS_SUBSET_MEAN = "class_subsets"


def default_head(name: str) -> Head:
    """The head of a registered dataset name, or the identity for other names (e.g. synthetic splits)."""
    try:
        spec = metadata.get_dataset(name)
    except ValueError:
        return Head()
    return head_for(spec.head)


def reference_head(shift: str) -> Head | None:
    """The head that scores ImageNet (1000-class labels) on a shift set's classes, or None (all classes).

    ImageNet-R/-A: the 200-class head of the shift set itself. ObjectNet: its 113 classes, each the max over
    the ImageNet classes it maps to, with each of those ImageNet labels mapped to its ObjectNet class (as the
    testbed's val-on-objectnet-classes)."""
    subset = SUBSET_SHIFTS.get(shift)
    if subset is None:
        return None
    if subset != "objectnet":
        return head_for(subset)
    label_map = np.full(1000, -1, np.int64)
    for j, c in enumerate(metadata.objectnet_classes()):
        label_map[c["imagenet_indices"]] = j
    return Head(groups=head_for("objectnet").groups, label_map=label_map)


def _score_heads(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    dataset: Iterable[Batch],
    head: Head,
    extra_heads: Mapping[str, Head],
    *,
    max_batches: int | None,
    progress: str | None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics of one dataset under `head` and under each of `extra_heads`, from a single pass of the model.

    The logits are kept on the host for the extra heads, only the columns those heads read (ImageNet-R, -A
    and ObjectNet together read 525 of ImageNet's 1000: about 100 MB for the 50k validation images)."""
    if not extra_heads:
        return evaluate_logits(logits_fn, dataset, head, max_batches=max_batches, progress=progress), {}
    groups = [h.groups for h in extra_heads.values()]
    cols = None if any(g is None for g in groups) else np.unique(np.concatenate([g.ravel() for g in groups]))
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending: list[Batch] = []

    def capped() -> Iterator[Batch]:
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                return
            pending.append(batch)
            yield batch

    def recording(images: np.ndarray) -> np.ndarray:
        out = np.asarray(logits_fn(images))
        batch = pending.pop(0)
        labels = np.asarray(batch["label"], np.int64)
        kept.append((out if cols is None else out[:, cols], labels, batch_mask(batch)))
        return out

    main = evaluate_logits(recording, capped(), head, progress=progress)
    extra = {}
    for name, h in extra_heads.items():
        if cols is not None:
            h = Head(groups=np.searchsorted(cols, h.groups), label_map=h.label_map)
        if h.label_map is None:
            inside = sum(int(m.sum()) for _, _, m in kept)
        else:
            inside = sum(
                int((m & (y >= 0) & (h.label_map[np.clip(y, 0, None)] >= 0)).sum()) for _, y, m in kept
            )
        if int(gather_processes(np.array([inside])).sum()) == 0:
            # No reference image of this subset's classes (only with capped or mock data).
            extra[name] = {"num_examples": 0}
            continue
        batches = ({"image": lg, "label": y, "mask": m} for lg, y, m in kept)
        extra[name] = evaluate_logits(lambda x: x, batches, h)
    return main, extra


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
    baselines: Mapping[str, Baseline] | None = None,
    definition: str | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics on each (name, dataset), the mean top-1 of the shifted sets, and their effective
    robustness where the reference is ImageNet.

    `reference` names the in-distribution set (default: the first); every other set counts as a shift.
    Registered names (imagenet-r, imagenet-a, objectnet) get their class-subset heads unless `heads` says
    otherwise. With reference "imagenet1k", the shifts that have a baseline (`baselines`, default
    `baseline_fits(definition=definition)`, see DEFINITIONS) get their effective robustness (fractions, like acc1), the ImageNet pass
    also scoring the class subsets of the shifts evaluated. Returns {"datasets": {name: metrics},
    "reference": name, "reference_acc1", "average_shift_acc1", "reference_on_shift_classes": {shift:
    metrics}, "effective_robustness": {shift: ER}, "average_effective_robustness" (their mean, None unless
    all are defined), "effective_robustness_of_average" (the shift mean against the "average" baseline, when all five
    shifts are evaluated)}; ER entries are None where undefined.
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
    if reference not in [n for n, _ in datasets]:
        raise ValueError(f"reference {reference!r} is not among the datasets {[n for n, _ in datasets]}")
    shift_names = [n for n, _ in datasets if n != reference]
    if reference == REFERENCE_DATASET:
        baselines = baseline_fits(definition=definition) if baselines is None else baselines
        ref_heads = {n: reference_head(n) for n in shift_names if n in baselines and n in SUBSET_SHIFTS}
    else:
        baselines, ref_heads = {}, {}
    per_dataset, on_classes = {}, {}
    for name, ds in datasets:
        head = (heads or {}).get(name) or default_head(name)
        per_dataset[name], extra = _score_heads(
            lambda x: enc(x, clf),
            ds,
            head,
            ref_heads if name == reference else {},
            max_batches=max_batches,
            progress=name if progress else None,
        )
        on_classes.update(extra)
    shifts = [per_dataset[n]["acc1"] for n in shift_names]
    report = {
        "datasets": per_dataset,
        "reference": reference,
        "reference_acc1": per_dataset[reference]["acc1"],
        "average_shift_acc1": float(np.mean(shifts)) if shifts else None,
        "reference_on_shift_classes": on_classes,
        "effective_robustness_definition": definition or DEFAULT_DEFINITION,
    }
    return report | effective_robustness_report(report, baselines)


def effective_robustness_report(
    report: Mapping[str, Any], baselines: Mapping[str, Baseline]
) -> dict[str, Any]:
    """The effective-robustness entries of a robustness report (see `robustness_eval`) from its accuracies."""
    er: dict[str, float | None] = {}
    for name, metrics in report["datasets"].items():
        if name == report["reference"] or name not in baselines:
            continue
        x = reference_accuracy(report, name)
        er[name] = None if x is None else baselines[name].effective_robustness(metrics["acc1"], x)
    defined = [v for v in er.values() if v is not None]
    mean_er = float(np.mean(defined)) if defined and len(defined) == len(er) else None
    of_average = None
    shifts = set(report["datasets"]) - {report["reference"]}
    if "average" in baselines and shifts == set(metadata.IMAGENET_SHIFTS):
        x = average_reference_accuracy(report, baselines["average"])
        if x is not None:
            of_average = baselines["average"].effective_robustness(report["average_shift_acc1"], x)
    return {
        "effective_robustness": er,
        "average_effective_robustness": mean_er,
        "effective_robustness_of_average": of_average,
    }


def reference_accuracy(report: Mapping[str, Any], shift: str) -> float | None:
    """The reference accuracy that a shift's baseline is evaluated at: ImageNet top-1 on the shift's
    classes where it has a subset (None if no reference image was of those classes), else ImageNet top-1."""
    if shift not in SUBSET_SHIFTS:
        return report["reference_acc1"]
    return report.get("reference_on_shift_classes", {}).get(shift, {}).get("acc1")


def average_reference_accuracy(report: Mapping[str, Any], fit: Baseline) -> float | None:
    """The reference accuracy the "average" baseline is evaluated at: ImageNet top-1, or under the CLIP
    paper's definition the mean over the shifts of `reference_accuracy` (None if one is undefined)."""
    if fit.reference != CLASS_SUBSET_MEAN:
        return report["reference_acc1"]
    refs = [reference_accuracy(report, s) for s in metadata.IMAGENET_SHIFTS]
    return None if any(r is None for r in refs) else float(np.mean(refs))


def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)), elementwise; -inf at 0 and inf at 1."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def inv_logit(z: Any) -> np.ndarray:
    """1 / (1 + exp(-z)), elementwise, without overflow for large |z|."""
    z = np.asarray(z, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclasses.dataclass(frozen=True)
class LogitFit:
    """The baseline of one shift set: logit(shift acc) = slope * logit(reference acc) + intercept, fitted
    by least squares over `models`; `reference` names the reference accuracy (a key of the points JSON)."""

    dataset: str
    slope: float
    intercept: float
    reference: str
    models: tuple[str, ...]

    def predict(self, reference_acc: Any) -> np.ndarray:
        """The baseline's shift accuracy (fraction) at a reference accuracy (fraction)."""
        return inv_logit(self.slope * logit(reference_acc) + self.intercept)

    def effective_robustness(self, shift_acc: float, reference_acc: float) -> float:
        """Shift accuracy above the baseline at the reference accuracy (fractions; Taori et al. 2020)."""
        return float(shift_acc - self.predict(reference_acc))


@dataclasses.dataclass(frozen=True)
class PiecewiseLogitFit:
    """A baseline of two logit lines: `below` for reference accuracies under `pivot`, `above` from it on
    (the testbed's ImageNet-A fit, split at ResNet-50's accuracy, where the models' trend bends)."""

    dataset: str
    pivot: float
    below: LogitFit
    above: LogitFit
    reference: str
    models: tuple[str, ...]

    def predict(self, reference_acc: Any) -> np.ndarray:
        """The baseline's shift accuracy (fraction) at a reference accuracy (fraction)."""
        x = np.asarray(reference_acc, np.float64)
        return np.where(x < self.pivot, self.below.predict(x), self.above.predict(x))

    def effective_robustness(self, shift_acc: float, reference_acc: float) -> float:
        """Shift accuracy above the baseline at the reference accuracy (fractions)."""
        return float(shift_acc - self.predict(reference_acc))


Baseline = LogitFit | PiecewiseLogitFit


def fit_logit_line(x: Any, y: Any) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line of logit(y) on logit(x), accuracies as fractions."""
    u, v = logit(x), logit(y)
    if u.size < 2 or not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("need at least two points with accuracies strictly between 0 and 1")
    du, dv = u - u.mean(), v - v.mean()
    slope = float((du * dv).sum() / (du * du).sum())
    return slope, float(v.mean() - slope * u.mean())


def baseline_points(
    dataset: str, path: str | Path = metadata.TESTBED_POINTS, definition: str | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(models, reference acc, shift acc) of the points a shift set's baseline is fitted on, as fractions.

    The rule is the JSON's "fit" and `definition`'s entry of its "definitions" (default: DEFAULT_DEFINITION):
    baseline models (less the self-supervised ones unless the definition counts them), both numbers present,
    at least the definition's plot threshold on the reference, less "exclude". For "average" the shift
    accuracy is the mean of the five shift sets and the reference ImageNet top-1, or with "average_reference"
    "class_subsets" the mean of each set's own reference (the CLIP paper's class-subset axis)."""
    data = _points(str(path))
    fit, rules = data["fit"], _definition(data, definition)
    if dataset != "average" and dataset not in data["reference"]:
        raise ValueError(f"no baseline for {dataset!r}; known: {sorted(data['reference'])}")
    shifts = metadata.IMAGENET_SHIFTS if dataset == "average" else (dataset,)
    if dataset == "average" and rules.get("average_reference") == "class_subsets":
        refs = [data["reference"][s] for s in shifts]
    else:
        refs = [data["reference"][dataset]]
    columns = [rules.get("shift_column", {}).get(s, s) for s in shifts]
    names, xs, ys = [], [], []
    for entry in data["baseline_models"]:
        if entry["self_supervised"] and not rules["self_supervised"]:
            continue
        if entry["model"] in fit["exclude"].get(dataset, ()):
            continue
        values = [entry.get(c) if c in entry else data[c].get(entry["model"]) for c in columns]
        x = [entry.get(r) for r in refs]
        if any(v is None for v in values + x):
            continue
        if np.mean(x) < rules.get("min_reference", {}).get(dataset, 0):
            continue
        names.append(entry["model"])
        xs.append(float(np.mean(x)) / 100)
        ys.append(float(np.mean(values)) / 100)
    return names, np.array(xs), np.array(ys)


def _definition(data: Mapping[str, Any], definition: str | None) -> dict[str, Any]:
    definition = definition or DEFAULT_DEFINITION
    if definition not in data["definitions"]:
        raise ValueError(
            f"unknown effective-robustness definition {definition!r}; choose one of {sorted(data['definitions'])}"
        )
    return data["definitions"][definition]


@functools.cache
def _points(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@functools.cache
def baseline_fits(
    path: str | Path = metadata.TESTBED_POINTS, definition: str | None = None
) -> dict[str, Baseline]:
    """The baseline of each shift set with stored points, and of their average ("average"), as `definition`
    (a key of the points JSON's "definitions"; default DEFAULT_DEFINITION) defines them."""
    data = _points(str(path))
    rules = _definition(data, definition)
    fits: dict[str, Baseline] = {}
    for name in list(data["reference"]):
        models, x, y = baseline_points(name, path, definition)
        reference = data["reference"][name]
        if name == "average" and rules.get("average_reference") == "class_subsets":
            reference = CLASS_SUBSET_MEAN
        pivot = rules.get("piecewise", {}).get(name)
        if pivot is None:
            fits[name] = LogitFit(name, *fit_logit_line(x, y), reference, tuple(models))
            continue
        # The testbed's ImageNet-A pieces: strictly below and strictly above the pivot (paper_imagenet_a.py).
        pieces = []
        for keep in (x < pivot / 100, x > pivot / 100):
            kept = tuple(m for m, k in zip(models, keep, strict=True) if k)
            pieces.append(LogitFit(name, *fit_logit_line(x[keep], y[keep]), reference, kept))
        fits[name] = PiecewiseLogitFit(name, pivot / 100, pieces[0], pieces[1], reference, tuple(models))
    return fits


def testbed_plot_points(
    path: str | Path = metadata.TESTBED_POINTS, definition: str | None = None
) -> list[dict[str, Any]]:
    """The "average" baseline's points as plot points (reference acc, mean shift acc; fractions)."""
    models, x, y = baseline_points("average", path, definition)
    return [
        {"label": m, "x": float(a), "y": float(b), "kind": "ImageNet models (testbed)"}
        for m, a, b in zip(models, x, y, strict=True)
    ]


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
    points: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
    logit: bool = True,
    baseline: LogitFit | None = None,
) -> dict[str, Any]:
    """Scatter of mean shift accuracy against reference accuracy with y = x (no drop under shift) and the
    fitted baseline (`baseline`, e.g. `baseline_fits()["average"]`), as the CLIP paper's Fig. 13.

    points: [{"label", "x", "y", "kind"}] with accuracies as fractions; kind 'ours' is highlighted, kind
    "ImageNet models (testbed)" drawn small and unlabelled (`testbed_plot_points()`). With `logit`, both axes
    are logit-scaled, where ImageNet models fall on a line. Returns what was drawn, read back from the
    artists: {"path", "xscale", "yscale", "identity": [n, 2], "baseline": [n, 2] or None,
    "points": {kind: [m, 2]}, "labels": {kind: [label]}}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    xs = [p["x"] for p in points] + [p["y"] for p in points]
    lo = max(min(xs + [0.2]) * 0.8, 0.01)
    hi = min(max(xs + [0.9]) * 1.05, 0.995)
    line = np.linspace(lo, hi, 100)
    (identity,) = ax.plot(line, line, "k--", lw=1, label="y = x (no drop under shift)")
    fitted = None
    if baseline is not None:
        (fitted,) = ax.plot(
            line,
            baseline.predict(line),
            "-",
            color="tab:red",
            lw=1.5,
            label=f"ImageNet models' fit (logit), {len(baseline.models)} models",
        )
    markers = {
        "ours": ("*", 180, "tab:red", True),
        "ImageNet models (testbed)": ("o", 12, "tab:blue", False),
        "CLIP (paper)": ("D", 40, "tab:green", True),
    }
    drawn, labels = {}, {}
    for kind in dict.fromkeys(p.get("kind", "ours") for p in points):
        sel = [p for p in points if p.get("kind", "ours") == kind]
        m, size, c, annotate = markers.get(kind, ("o", 50, None, True))
        artist = ax.scatter(
            [p["x"] for p in sel], [p["y"] for p in sel], marker=m, s=size, c=c, label=kind, zorder=3
        )
        drawn[kind] = np.asarray(artist.get_offsets(), np.float64)
        labels[kind] = [p["label"] for p in sel]
        for p in sel if annotate else ():
            ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    if logit:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ticks = [
            t for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98) if lo <= t <= hi
        ]
        ax.set_xscale("logit")
        ax.set_yscale("logit")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks(ticks)
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("reference (ImageNet) top-1 accuracy, %")
    ax.set_ylabel("average top-1 accuracy on distribution shifts, %")
    ax.set_title(title or "Effective robustness")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    out = {
        "path": path,
        "xscale": ax.get_xscale(),
        "yscale": ax.get_yscale(),
        "identity": np.asarray(identity.get_xydata(), np.float64),
        "baseline": None if fitted is None else np.asarray(fitted.get_xydata(), np.float64),
        "points": drawn,
        "labels": labels,
    }
    plt.close(fig)
    return out


@dataclasses.dataclass(frozen=True)
class RobustnessConfig(DataConfig):
    """datasets: comma-separated registered names (or a sequence), the first the reference; ObjectNet is
    skipped without objectnet_dir. Or splits: comma-separated splits of `dataset`, the first the reference
    (the synthetic dataset's shifts are splits). templates, classifier_cache: as for zero-shot."""

    datasets: Any = ",".join(("imagenet1k",) + metadata.IMAGENET_SHIFTS)
    splits: Any = None
    templates: str | None = None
    classifier_cache: str | None = None
    effective_robustness: str = DEFAULT_DEFINITION  # one of DEFINITIONS


class Robustness(Evaluator):
    """Zero-shot metrics on a reference dataset and its shifts, with the mean top-1 over the shifts."""

    config_class = RobustnessConfig
    requires_dataset = False

    def __init__(
        self, config, model: CLIP, *, where: str = "robustness", inputs: ModelInputs | None = None
    ) -> None:
        super().__init__(config, model, where=where, inputs=inputs)
        c = self.config
        if c.effective_robustness not in DEFINITIONS:
            raise ValueError(
                f"{where}.effective_robustness is {c.effective_robustness!r}; choose one of {', '.join(DEFINITIONS)}"
            )
        self.tokenizer = self.inputs.text_tokenizer(model.cfg)
        size, transform = model.cfg.vision.image_size, self.inputs.transform
        if c.splits is not None:
            if not c.dataset:
                raise ValueError(f"{where}.splits needs {where}.dataset")
            reference = metadata.get_dataset(c.dataset)
            splits = _names(c.splits, f"{where}.splits")
            self.datasets = [
                (split, eval_dataset(c, size, split=split, transform=transform)) for split in splits
            ]
            self.heads = {split: head_for(reference.head) for split in splits}
        else:
            names = _names(c.datasets, f"{where}.datasets")
            if "objectnet" in names and not c.objectnet_dir:
                print(f"{where}: no objectnet_dir, skipping objectnet")
                names.remove("objectnet")
            specs = [metadata.get_dataset(n) for n in names]
            reference = specs[0]
            self.datasets = [
                (s.name, eval_dataset(c, size, dataset=s.name, transform=transform)) for s in specs
            ]
            self.heads = None
        self.classnames, templates = metadata.classnames_and_templates(
            reference.name, c.task, self.inputs.prompts
        )
        self.templates = metadata.choose_templates(c.templates, reference, templates)

    def run(self, params: Any, *, checkpoint_id: str | None = None) -> dict[str, Any]:
        c = self.config
        classifier = build_zeroshot_classifier(
            self.model,
            params,
            self.classnames,
            self.templates,
            tokenizer=self.tokenizer,
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
            definition=c.effective_robustness,
        )


def _names(value: Any, where: str) -> list[str]:
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"{where} is empty")
    return names


def report_records(
    report: Mapping[str, Any],
    model: str,
    pretrained: str,
    preprocess: str = "pil",
    transform: EvalTransform | None = None,
) -> list[dict]:
    """CLIP_benchmark records of a robustness report: one per dataset, and the shift average, each saying
    which input pipeline ran (`preprocess`, see `clip_jax.eval.results.preprocess_note`).

    A shift with a baseline also gets, in its metrics, "effective_robustness" and "reference_acc1" (the
    ImageNet accuracy its baseline is evaluated at: on its classes for ImageNet-R, -A and ObjectNet), and
    the baseline's line beside them; the average record gets "effective_robustness" (the mean over the
    shifts) and "effective_robustness_of_average" (the shift mean against the average baseline)."""
    from clip_jax.eval import results

    er = report.get("effective_robustness", {})
    definition = report.get("effective_robustness_definition")
    fits = baseline_fits(definition=definition) if er else {}
    records = []
    for name, metrics in report["datasets"].items():
        extra: dict[str, Any] = {"preprocess": results.preprocess_note(preprocess, transform)}
        metrics = dict(metrics)
        if name in er:
            metrics.update(effective_robustness=er[name], reference_acc1=reference_accuracy(report, name))
            extra["effective_robustness_baseline"] = _baseline_note(fits[name], definition)
        records.append(
            results.make_record(name, model, pretrained, "zeroshot_classification", metrics, **extra)
        )
    if report["average_shift_acc1"] is not None:
        metrics = {"acc1": report["average_shift_acc1"]}
        extra = {
            "shifts": [n for n in report["datasets"] if n != report["reference"]],
            "preprocess": results.preprocess_note(preprocess, transform),
        }
        if er:
            metrics["effective_robustness"] = report.get("average_effective_robustness")
            metrics["effective_robustness_of_average"] = report.get("effective_robustness_of_average")
            if metrics["effective_robustness_of_average"] is not None:
                extra["effective_robustness_baseline"] = _baseline_note(fits["average"], definition)
        records.append(
            results.make_record(
                "imagenet_shift_average", model, pretrained, "zeroshot_classification", metrics, **extra
            )
        )
    return records


def _baseline_note(fit: Baseline, definition: str | None) -> dict[str, Any]:
    note: dict[str, Any] = {"definition": definition or DEFAULT_DEFINITION}
    if isinstance(fit, PiecewiseLogitFit):
        note["pivot"] = fit.pivot
        note["pieces"] = [{"slope": f.slope, "intercept": f.intercept} for f in (fit.below, fit.above)]
    else:
        note.update(slope=fit.slope, intercept=fit.intercept)
    return note | {
        "reference": fit.reference,
        "num_models": len(fit.models),
        "points": "clip_jax/eval/metadata/imagenet_testbed_points.json (Taori et al. 2020 testbed)",
    }


def plot_point(report: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    """The report's point on the effective-robustness plot (None without shifts): x is the "average"
    baseline's reference under the report's definition (the class-subset mean for clip-paper)."""
    if report["average_shift_acc1"] is None:
        return None
    fit = baseline_fits(definition=report.get("effective_robustness_definition")).get("average")
    x = report["reference_acc1"] if fit is None else average_reference_accuracy(report, fit)
    if x is None:
        return None
    return {"label": label, "x": x, "y": report["average_shift_acc1"], "kind": "ours"}


def plot_with_baseline(
    ours: Sequence[Mapping[str, Any]],
    path: str | Path,
    published: str | Path | None = None,
    definition: str | None = None,
) -> dict[str, Any]:
    """The effective-robustness plot of `ours` beside the testbed's ImageNet models and their fitted
    average baseline, and the CLIP paper's points where `published` (published_clip_numbers.json) exists."""
    fit = baseline_fits(definition=definition)["average"]
    if fit.reference == CLASS_SUBSET_MEAN:  # the paper's numbers here are on full ImageNet, another axis
        paper = []
    else:
        paper = published_points(published) if published and Path(published).exists() else []
    return plot_effective_robustness(
        testbed_plot_points(definition=definition) + paper + list(ours), path, baseline=fit
    )


def main(argv: Sequence[str] | None = None) -> list[dict]:
    from clip_jax.eval import cli, results

    parser = argparse.ArgumentParser(description="Zero-shot accuracy under ImageNet distribution shifts.")
    cli.add_common_args(parser)
    parser.add_argument(
        "--datasets",
        default=None,
        help="comma-separated; the first is the reference. ObjectNet needs --objectnet-dir (default: "
        f"{','.join(('imagenet1k',) + metadata.IMAGENET_SHIFTS)})",
    )
    parser.add_argument(
        "--dataset", default=None, help="with --splits: the dataset whose splits are the shifts"
    )
    parser.add_argument(
        "--splits",
        default=None,
        help="comma-separated splits of --dataset, the first the reference (clip_synthetic's shifts: "
        "test,heldout,sketch,new_background,noise,new_texture)",
    )
    cli.add_template_arg(parser)
    parser.add_argument("--classifier-cache", default=None)
    parser.add_argument("--plot", default=None, help="PNG path for the effective-robustness plot")
    parser.add_argument("--published", default=str(metadata.PUBLISHED_NUMBERS))
    parser.add_argument(
        "--effective-robustness",
        choices=DEFINITIONS,
        default=DEFAULT_DEFINITION,
        help="whose definition of the baselines (docs/effective_robustness.md): supervised (default), "
        "testbed (imagenet-testbed's plots), clip-paper (CLIP paper Fig. 13's class-subset average)",
    )
    args = parser.parse_args(argv)
    if args.splits is not None and (args.datasets is not None or not args.dataset):
        raise UserError("--splits needs --dataset (the dataset they split) and no --datasets")
    if args.splits is None:
        args.datasets = args.datasets or RobustnessConfig.datasets
    if args.plot and not Path(args.published).is_file():  # read only for the plot, after the evaluation
        raise UserError(f"--published {args.published} is not a file (the published numbers the plot shows)")

    model, params, ident = cli.load_model(args)
    fields = cli.data_fields(args) | {
        "templates": args.templates,
        "classifier_cache": args.classifier_cache,
        "effective_robustness": args.effective_robustness,
    }
    shifts = {"splits": args.splits} if args.splits else {"datasets": args.datasets}
    evaluator = cli.build(Robustness, fields | shifts, model, ident.inputs)
    report = evaluator.run(params, checkpoint_id=ident.checkpoint_id)
    records = report_records(report, ident.model, ident.pretrained, args.preprocess, ident.inputs.transform)
    if jax.process_index() == 0:
        if args.output:
            results.write_records(args.output, records)
        keys = ("reference", "reference_acc1", "average_shift_acc1", "average_effective_robustness")
        summary = {k: report[k] for k in keys}
        print(json.dumps(summary | {n: m["acc1"] for n, m in report["datasets"].items()}))
        if report["effective_robustness"]:
            print(json.dumps({"effective_robustness": report["effective_robustness"]}))
        point = plot_point(report, f"{ident.model} ({ident.pretrained})")
        if args.plot and point is not None:
            plot_with_baseline([point], args.plot, args.published, args.effective_robustness)
    return records


if __name__ == "__main__":
    from clip_jax.cli_errors import run_cli

    raise SystemExit(run_cli(main, "clip_jax.eval.robustness"))
