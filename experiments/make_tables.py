"""Gather CLIP_benchmark result records into markdown and CSV tables, with the CLIP paper's numbers beside ours.

    python experiments/make_tables.py results/ --markdown results/tables.md --csv results/tables.csv

Inputs are JSON record files or folders of them (see clip_jax.eval.results). The CSV is long format, one
row per (model, pretrained, task, dataset, metric); the markdown has one table per task with a row per
model and a column per dataset, each cell "ours (published)". Published numbers (clip_jax/eval/metadata/
published_clip_numbers.json) are matched by model name and shown for records of the weights they were
published for: a pretrained tag containing one of the entry's `pretrained_contains` ("openai" for the CLIP
paper's rows; "siglip" or "webli" for SigLIP's and SigLIP 2's, big_vision's and HF's file names); numbers
are top-1 / recall / effective robustness in percent (points).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from clip_jax.eval import metadata
from clip_jax.eval.results import read_records

HERE = Path(__file__).resolve().parent

# Metrics reported per task, in column order.
TASK_METRICS = {
    # effective_robustness: shift accuracy above the ImageNet models' baseline (clip_jax.eval.robustness),
    # in the shift records and, averaged over the shifts, in the imagenet_shift_average record, which also
    # holds effective_robustness_of_average (the shift mean against the average baseline, Fig. 13's).
    "zeroshot_classification": ("acc1", "effective_robustness", "effective_robustness_of_average"),
    "linear_probe": ("acc1",),
    "zeroshot_retrieval": (
        "image_retrieval_recall@1",
        "image_retrieval_recall@5",
        "text_retrieval_recall@1",
        "text_retrieval_recall@5",
    ),
}
PAPER_TASK = {"zeroshot_classification": "zeroshot", "linear_probe": "linear_probe"}
DATASET_ORDER = (
    "imagenet1k",
    "imagenetv2",
    "imagenet-r",
    "imagenet_sketch",
    "objectnet",
    "imagenet-a",
    "imagenet_shift_average",
)


def _canonical(model: str) -> str:
    return model.lower().replace("/", "-").replace("@336px", "-336").removesuffix("-quickgelu")


def published_lookup(published: dict) -> dict[tuple[str, str, str], tuple[float, tuple[str, ...]]]:
    """{(canonical model, paper task, dataset): (percent, pretrained tags it holds for)} for every
    non-null published number."""
    out = {}
    for label, entry in published.get("models", {}).items():
        names = {_canonical(label), _canonical(entry.get("open_clip_name", label))}
        tags = tuple(t.lower() for t in entry.get("pretrained_contains", ("openai",)))
        for task in ("zeroshot", "linear_probe"):
            for dataset, value in (entry.get(task) or {}).items():
                if value is not None:
                    out.update({(n, task, dataset): (float(value), tags) for n in names})
    return out


def table_rows(records: Sequence[dict], published: dict | None = None) -> list[dict]:
    """Long-format rows: model, pretrained, task, dataset, metric, ours (%), paper (% or None), delta."""
    lookup = published_lookup(published or {})
    rows = []
    for r in records:
        for metric in TASK_METRICS.get(r["task"], ()):
            value = r["metrics"].get(metric)
            if value is None:
                continue
            paper = None
            found = lookup.get((_canonical(r["model"]), PAPER_TASK.get(r["task"], ""), r["dataset"]))
            pretrained = str(r.get("pretrained", "")).lower()
            if found is not None and metric == "acc1" and any(tag in pretrained for tag in found[1]):
                paper = found[0]
            ours = 100.0 * float(value)
            rows.append(
                {
                    "model": r["model"],
                    "pretrained": r.get("pretrained", ""),
                    "task": r["task"],
                    "dataset": r["dataset"],
                    "metric": metric,
                    "ours": round(ours, 2),
                    "paper": paper,
                    "delta": None if paper is None else round(ours - paper, 2),
                }
            )
    return rows


def _dataset_key(name: str) -> tuple[int, str]:
    return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name)


def to_markdown(rows: Sequence[dict]) -> str:
    """One table per (task, metric): models down, datasets across, cells 'ours (paper)'."""
    out = io.StringIO()
    groups = sorted({(r["task"], r["metric"]) for r in rows})
    for task, metric in groups:
        sel = [r for r in rows if r["task"] == task and r["metric"] == metric]
        datasets = sorted({r["dataset"] for r in sel}, key=_dataset_key)
        models = sorted({(r["model"], r["pretrained"]) for r in sel})
        cells = {(r["model"], r["pretrained"], r["dataset"]): r for r in sel}
        out.write(f"### {task}: {metric} (%; published in parentheses)\n\n")
        out.write("| model | pretrained | " + " | ".join(datasets) + " |\n")
        out.write("|---|---|" + "---|" * len(datasets) + "\n")
        for model, pretrained in models:
            row = []
            for d in datasets:
                c = cells.get((model, pretrained, d))
                if c is None:
                    row.append("")
                else:
                    row.append(
                        f"{c['ours']:.1f}" + (f" ({c['paper']:.1f})" if c["paper"] is not None else "")
                    )
            out.write(f"| {model} | {pretrained} | " + " | ".join(row) + " |\n")
        out.write("\n")
    return out.getvalue()


def to_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    fields = ["model", "pretrained", "task", "dataset", "metric", "ours", "paper", "delta"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else r[k] for k in fields})
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="record files or folders")
    parser.add_argument("--published", default=str(metadata.PUBLISHED_NUMBERS))
    parser.add_argument("--markdown", default=None, help="write the markdown tables here (default: print)")
    parser.add_argument("--csv", default=None, help="write the long-format CSV here")
    args = parser.parse_args(argv)

    published = json.loads(Path(args.published).read_text()) if Path(args.published).exists() else {}
    rows = table_rows(read_records(args.inputs), published)
    if not rows:
        raise SystemExit(f"no result records found in {args.inputs}")
    md = to_markdown(rows)
    if args.markdown:
        Path(args.markdown).write_text(md)
    else:
        print(md)
    if args.csv:
        Path(args.csv).write_text(to_csv(rows))
    return rows


if __name__ == "__main__":
    main()
