"""Regenerate imagenet_testbed_points.json, the effective-robustness baseline's points, from the results table
of the ImageNet testbed (Taori et al. 2020, "Measuring Robustness to Natural Distribution Shifts in Image
Classification"; github.com/modestyachts/imagenet-testbed, MIT licence).

    python -m clip_jax.eval.metadata.build_testbed --testbed DIR   # DIR: a checkout of imagenet-testbed

Reads DIR/robustness_top1s.csv (the testbed's "full results") and the model categories in
DIR/plotting/model_types.py (parsed with `ast`, never run). Keeps the testbed's "Standard training" models
that its line fits use (names without "aws", "batch64" or "subsample", as in its plotting scripts) and the
testbed's CLIP zero-shot rows (not part of any fit), with the columns below, rounded to 3 decimals.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
OUTPUT = "imagenet_testbed_points.json"

# Our key -> the testbed's column. The reference accuracies of ImageNet-R, -A and ObjectNet are ImageNet
# validation accuracies on the shift set's classes (val-on-*-classes), as the testbed's plots use.
COLUMNS = {
    "imagenet1k": "val",
    "imagenetv2": "imagenetv2-matched-frequency",
    "imagenet-r": "imagenet-r",
    "imagenet_sketch": "imagenet-sketch",
    "objectnet": "objectnet-1.0-beta",
    "imagenet-a": "imagenet-a",
    "imagenet1k_on_imagenet-r_classes": "val-on-imagenet-r-classes",
    "imagenet1k_on_imagenet-a_classes": "val-on-imagenet-a-classes",
    "imagenet1k_on_objectnet_classes": "val-on-objectnet-classes",
}
# Standard-category models whose features were learned without labels (linear probes or fine-tunes of
# SimCLRv2, SwAV, SimSiam); the testbed added them in Sep 2021. Kept, flagged, and left out of the fit.
SELF_SUPERVISED = ("simclrv2", "swav", "simsiam")
CLIP_ROWS = ("resnet50_clip_zeroshot", "vit_b_32_clip_zeroshot")
# The testbed's ImageNetV2 plots (plotting/paper_nat_shift_imagenetv2.py line 34) read this column, not
# "imagenetv2-matched-frequency" (up to 0.54 pp apart); stored per model beside the rows.
V2_FORMAT_VAL = "imagenetv2-matched-frequency-format-val"


def standard_models(model_types_py: Path) -> list[str]:
    """Names mapped to ModelTypes.STANDARD in the literal `model_types_map = {...}` of model_types.py."""
    tree = ast.parse(model_types_py.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "model_types_map":
            return [
                k.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(v, ast.Attribute) and v.attr == "STANDARD"
            ]
    raise ValueError(f"no model_types_map literal in {model_types_py}")


def _row(row: dict[str, str], model: str, source: str, **extra: bool) -> dict:
    out = {"model": model}
    out.update(extra)
    for key, column in COLUMNS.items():
        value = row.get(column, "")
        out[key] = round(float(value), 3) if value not in ("", None) else None
    out["source"] = source
    return out


SOURCE = (
    "Taori et al. 2020, Measuring Robustness to Natural Distribution Shifts in Image Classification "
    "(NeurIPS 2020, arXiv:2007.00644): the results table of their testbed, "
    "github.com/modestyachts/imagenet-testbed robustness_top1s.csv (MIT licence; last changed in its commit "
    "f4083a2, 2021-09-15)"
)
REFERENCE = {
    "imagenetv2": "imagenet1k",
    "imagenet-r": "imagenet1k_on_imagenet-r_classes",
    "imagenet_sketch": "imagenet1k",
    "objectnet": "imagenet1k_on_objectnet_classes",
    "imagenet-a": "imagenet1k_on_imagenet-a_classes",
    "average": "imagenet1k",
}
FIT = {
    "transform": "logit(p) = log(p / (1 - p)) of the accuracy as a fraction, on both axes",
    "method": "least squares line of logit(shift top-1) on logit(reference top-1), one line per shift set "
    "(the testbed's plotting/plotter.py uses scipy.stats.linregress)",
    "reference": "the 'reference' entry: ImageNet top-1, or for ImageNet-R, -A and ObjectNet the ImageNet "
    "validation top-1 on that set's classes (200, 200 and 113 classes; the testbed's val-on-*-classes)",
    "models": "every baseline_models entry with self_supervised false and both numbers present, except "
    "'exclude': the testbed's 'Standard training' models (plotting/model_types.py) that its line fits use, "
    "less the six whose features were learned without labels (SimCLRv2, SwAV, SimSiam). The testbed's plot "
    "thresholds (ImageNet >= 55%, class-subset ImageNet >= 75% for -R/-A, >= 55% for ObjectNet) drop none of them",
    "exclude": {"imagenet-a": ["resnet50"], "average": ["resnet50"]},
    "exclude_reason": "ImageNet-A was collected adversarially against ResNet-50, whose accuracy on it is 0 by "
    "construction (logit -inf); the testbed leaves it out of its ImageNet-A plots",
    "average": "y = the mean of the five shift accuracies (imagenetv2, imagenet-r, imagenet_sketch, objectnet, "
    "imagenet-a), x = imagenet1k, over the models with all five (the CLIP paper's Fig. 13 averages seven "
    "sets; ImageNet-Vid and YouTube-BB are not evaluated here)",
    "not_in_fit": "clip_zeroshot: the testbed's own zero-shot CLIP rows (OpenAI ResNet-50 and ViT-B/32)",
}
# Effective robustness as each source defines it: the baselines' model sets and fit parameters, read by
# clip_jax.eval.robustness.baseline_fits(definition=...). Paths and lines are of imagenet-testbed at 0170eec.
DEFINITIONS = {
    "supervised": {
        "description": "clip_jax's first definition, the default: one logit line per shift set (Taori et al.'s "
        "definition) over the testbed's supervised standard models ('fit' above), the five-set average "
        "against ImageNet top-1",
        "self_supervised": False,
    },
    "testbed": {
        "description": "the testbed's plotting code: its 'Standard training' models, self-supervised ones "
        "included (plotting/model_types.py lines 111-112, 170-174 map SimCLRv2, SimSiam, SwAV to STANDARD), "
        "each set's plot threshold, ImageNetV2 read from the format-val column, and ImageNet-A fitted in two "
        "pieces split at 91.86% class-subset ImageNet accuracy (ResNet-50's)",
        "self_supervised": True,
        "min_reference": {
            "imagenetv2": 55,
            "imagenet-r": 75,
            "imagenet_sketch": 55,
            "objectnet": 55,
            "imagenet-a": 75,
            "average": 55,
        },
        "min_reference_source": "show_in_plot of plotting/paper_nat_shift_imagenetv2.py (val >= 55), "
        "paper_appendix_imagenet_r.py line 40 (val-on-imagenet-r-classes >= 75), "
        "paper_appendix_imagenet_sketch.py line 22 (val >= 55), paper_objectnet.py line 26 "
        "(val-on-objectnet-classes >= 55), paper_imagenet_a.py line 26 (val-on-imagenet-a-classes >= 75); "
        "the average has no testbed plot and takes ImageNet's 55",
        "shift_column": {"imagenetv2": "imagenetv2_format_val"},
        "piecewise": {"imagenet-a": 91.86},
        "piecewise_source": "plotting/paper_imagenet_a.py lines 29-40 (line one: x < 91.86, line two: "
        "x > 91.86, ResNet-50 left out by show_in_plot, line 26) and plotter.py "
        "model_scatter_plot_imagenet_a lines 1105-1153 (scipy.stats.linregress per piece, piece one drawn "
        "for x < pivot, piece two for x >= pivot)",
    },
    "clip-paper": {
        "description": "the CLIP paper's Figure 13 (Radford et al. 2021, Section 3.3): the average shift "
        "accuracy against the average ImageNet accuracy on each shift set's class subset (ImageNet top-1 "
        "for ImageNetV2 and Sketch, which have all 1000 classes); the paper averages 7 sets, of which "
        "clip_jax evaluates 5 (not ImageNet-Vid and YouTube-BB). Per-set lines and the model set as "
        "'supervised': which ImageNet models the paper's fit used cannot be read in a fetched source",
        "self_supervised": False,
        "average_reference": "class_subsets",
    },
}


def build(testbed: Path) -> dict:
    """The JSON's content from a checkout of the testbed."""
    commit = subprocess.run(
        ["git", "-C", str(testbed), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with open(testbed / "robustness_top1s.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    where = "robustness_top1s.csv row"
    keep = [
        m
        for m in standard_models(testbed / "plotting" / "model_types.py")
        if m in rows and not any(s in m.lower() for s in ("aws", "batch64", "subsample"))
    ]
    models = [
        _row(
            rows[m],
            m,
            f"{where} {m!r}",
            self_supervised=any(s in m.lower() for s in SELF_SUPERVISED),
        )
        for m in sorted(keep, key=lambda m: -float(rows[m]["val"]))
    ]
    clip = [_row(rows[m], m, f"{where} {m!r}") for m in CLIP_ROWS]
    v2 = {m["model"]: round(float(rows[m["model"]][V2_FORMAT_VAL]), 3) for m in models}
    return {
        "source": SOURCE,
        "testbed_commit": commit or None,
        "units": "top-1 accuracy, percent, rounded to 3 decimals",
        "columns": COLUMNS,
        "reference": REFERENCE,
        "fit": FIT,
        "definitions": DEFINITIONS,
        "imagenetv2_format_val": v2,
        "baseline_models": models,
        "clip_zeroshot": clip,
    }


def dumps(data: dict) -> str:
    """JSON with one model per line (the lists of points stay readable in a diff)."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(v) for v in value)
            parts.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, indent=2).replace(chr(10), chr(10) + ' ')}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--testbed", required=True, type=Path, help="checkout of modestyachts/imagenet-testbed"
    )
    args = parser.parse_args()
    built = build(args.testbed)
    path = HERE / OUTPUT
    path.write_text(dumps(built))
    assert json.loads(path.read_text()) == built
    print(
        f"wrote {path}: {len(built['baseline_models'])} baseline models, {len(built['clip_zeroshot'])} CLIP rows"
    )


if __name__ == "__main__":
    main()
