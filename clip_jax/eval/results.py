"""Result records in LAION CLIP_benchmark's JSON schema, so tables and tools built for it read ours.

    {"dataset": "imagenet1k", "model": "ViT-B-32-quickgelu", "pretrained": "openai",
     "task": "zeroshot_classification", "metrics": {"acc1": ..., "acc5": ..., "mean_per_class_recall": ...},
     "language": "en"}

Tasks: zeroshot_classification, linear_probe, zeroshot_retrieval. A file holds one record, a list of
records, or JSON lines; `read_records` accepts all three and whole folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clip_jax.preprocess import EvalTransform

TASKS = ("zeroshot_classification", "linear_probe", "zeroshot_retrieval", "contrastive")


def preprocess_note(preprocess: str, transform: EvalTransform | None = None) -> dict[str, Any]:
    """What a record says about its input pipeline: exact (PIL, bit for bit the reference preprocess:
    open_clip's, or for SigLIP's transform HF's SiglipImageProcessor), or the tf.image fast path with the
    bounds of its gap to it; and the model's eval transform where it is not OpenAI's."""
    from clip_jax.preprocess import OPENAI_TRANSFORM, TF_EVAL_GAP

    # A "tf" transform (big_vision's) always runs big_vision's own TF ops: exact, whatever `preprocess` says.
    big_vision = transform is not None and transform.library == "tf"
    note: dict[str, Any] = {
        "name": "tf" if big_vision else preprocess,
        "exact": preprocess == "pil" or big_vision,
    }
    if not note["exact"]:
        note["gap_vs_open_clip"] = dict(TF_EVAL_GAP)
    if transform is not None and transform != OPENAI_TRANSFORM:
        note["transform"] = dataclasses.asdict(transform)
    return note


def make_record(
    dataset: str, model: str, pretrained: str, task: str, metrics: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """One CLIP_benchmark record; `extra` keys (e.g. config details) are kept beside the schema's keys."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    record = {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": task,
        "metrics": {k: _plain(v) for k, v in metrics.items()},
        "language": "en",
    }
    record.update({k: _plain(v) for k, v in extra.items()})
    return record


def _plain(v: Any) -> Any:
    # numpy scalars/arrays are not JSON serialisable.
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write_records(path: str | os.PathLike, records: dict | list[dict]) -> None:
    """Write one record (a JSON object) or several (a JSON list), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(records, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _records_in_file(path: Path) -> list[dict]:
    text = path.read_text().strip()
    if not text:
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    objs = obj if isinstance(obj, list) else [obj]
    return [o for o in objs if isinstance(o, dict) and {"dataset", "task", "metrics"} <= set(o)]


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """All records in the given files and folders (folders are searched recursively for *.json[l])."""
    records = []
    for p in paths:
        p = Path(p)
        files = sorted(list(p.rglob("*.json")) + list(p.rglob("*.jsonl"))) if p.is_dir() else [p]
        for f in files:
            records.extend(_records_in_file(f))
    return records
