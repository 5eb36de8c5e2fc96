"""The one factory of evaluation datasets, used by every evaluator (and so by the trainer, the scripts and
the sweeps alike): which source a registered dataset is read from, which label feature is scored, and the
per-process sharding of its batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from clip_jax.eval import metadata
from clip_jax.eval.common import DataConfig
from clip_jax.eval.runtime import Batch
from clip_jax.preprocess import EvalTransform


def eval_dataset(
    data: DataConfig,
    image_size: int,
    *,
    dataset: str | None = None,
    split: str | None = None,
    transform: EvalTransform | None = None,
) -> Iterable[Batch]:
    """Padded image-label batches of a registered dataset at `image_size` in the model's eval `transform`
    (default OpenAI's), sharded over processes.

    `dataset` and `split` override the config's (the robustness evaluation reads several datasets, the
    linear probe two splits). `data.batch_size` is global: each process reads batch_size / process_count
    images per batch. The label is `metadata.label_feature` (clip_synthetic: the task's).
    """
    spec = metadata.get_dataset(dataset or data.dataset)
    split = split or data.split or spec.split
    if spec.head == "objectnet":  # read with PIL whatever `data.preprocess` says
        from clip_jax.data.objectnet import objectnet_dataset

        if not data.objectnet_dir:
            raise ValueError("ObjectNet is read from a local folder: set objectnet_dir (--objectnet-dir)")
        folders = [c["folder"] for c in metadata.objectnet_classes()]
        return objectnet_dataset(
            data.objectnet_dir,
            folders,
            batch_size=data.batch_size,
            image_size=image_size,
            transform=transform,
        )
    from clip_jax.data import make_eval_dataset

    return make_eval_dataset(
        spec.tfds_name,
        split,
        batch_size=data.batch_size,
        image_size=image_size,
        data_dir=data.data_dir,
        label_key=metadata.label_feature(spec, data.task),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        preprocess=data.preprocess,
        transform=transform,
    )


def retrieval_dataset(
    data: DataConfig, image_size: int, context_length: int, **kwargs: Any
) -> Iterable[Batch]:
    """Padded batches of images with their captions (a TFDS name or a source the data module reads);
    `kwargs` go to `clip_jax.data.make_retrieval_dataset` (the model's transform and tokenizer)."""
    from clip_jax.data import make_retrieval_dataset

    return make_retrieval_dataset(
        data.dataset,
        data.split or "test",
        batch_size=data.batch_size,
        image_size=image_size,
        context_length=context_length,
        data_dir=data.data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        preprocess=data.preprocess,
        **kwargs,
    )
