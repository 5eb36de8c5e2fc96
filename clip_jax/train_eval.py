"""Zero-shot evaluation inside the training loop (`config.eval.zeroshot`, every `config.eval_every` steps).

Each task is a dict: {"dataset": a name known to clip_jax.eval.metadata (e.g. "imagenet1k",
"clip_synthetic"), "split": optional, "task": the label feature for multi-label datasets (the synthetic
set's "shape" or "color"), "data_dir": optional (default: config.data.data_dir), "batch_size": optional,
"max_batches": optional cap}. The datasets are built once; the classifier is rebuilt from the current
parameters at every evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clip_jax.models.clip import CLIP

TASK_FIELDS = ("dataset", "split", "task", "data_dir", "batch_size", "max_batches")


class ZeroShotEvaluator:
    def __init__(
        self, tasks: Sequence[Mapping[str, Any]], model: CLIP, *, default_data_dir: str | None = None
    ):
        from clip_jax.data import make_eval_dataset
        from clip_jax.eval import metadata
        from clip_jax.eval.zeroshot import head_for

        self.model = model
        self.tasks = []
        for i, task in enumerate(tasks):
            task = dict(task)
            unknown = sorted(set(task) - set(TASK_FIELDS))
            if unknown or "dataset" not in task:
                raise ValueError(
                    f"config.eval.zeroshot[{i}]: unknown fields {unknown} or no 'dataset'; fields: {TASK_FIELDS}"
                )
            spec = metadata.get_dataset(task["dataset"])
            label = task.get("task")
            classnames, templates = metadata.classnames_and_templates(spec.name, label)
            dataset = make_eval_dataset(
                spec.tfds_name,
                task.get("split") or spec.split,
                batch_size=task.get("batch_size", 256),
                image_size=model.cfg.vision.image_size,
                data_dir=task.get("data_dir") or default_data_dir,
                label_key=label if spec.classes == "clip_synthetic" and label else "label",
            )
            name = spec.name + (f"_{label}" if label else "")
            self.tasks.append(
                (name, dataset, classnames, templates, head_for(spec.head), task.get("max_batches"))
            )

    def __call__(self, params: Any) -> dict[str, float]:
        """{'<dataset>[_<task>]/acc1': ..., '/acc5', '/mean_per_class_recall'} for the given params."""
        from clip_jax.eval.zeroshot import zeroshot_eval

        out = {}
        for name, dataset, classnames, templates, head, max_batches in self.tasks:
            metrics = zeroshot_eval(
                self.model, params, dataset, classnames, templates, head=head, max_batches=max_batches
            )
            for key in ("acc1", "acc5", "mean_per_class_recall"):
                if key in metrics:
                    out[f"{name}/{key}"] = float(metrics[key])
        return out
