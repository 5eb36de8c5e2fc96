"""Image-label evaluation input: TFDS classification sets, image folders and the synthetic set's splits.

    ds = make_eval_dataset("imagenet2012", "validation", batch_size=256, image_size=224)
    for batch in ds:   # {"image": float32 [b, S, S, 3], "label": int32 [b], "mask": bool [b], "index": int32 [b]}
        ...

Images get the model's eval transform (default OpenAI's), by default through PIL, bit-equal with open_clip's preprocess
(`preprocess="tf"`: the faster tf.image path, see `clip_jax.data.tf_ops.eval_image`). Each host reads its own
contiguous slice and every host yields `ds.num_batches` batches; padded rows have mask False, label -1 and
index -1, so summing over `mask` counts every example exactly once (see `padding.py`).

Names: any TFDS name prepared in `data_dir` (imagenet2012, imagenet_v2, imagenet_r, imagenet_a,
imagenet_sketch, cifar10, cifar100, ...), "clip_synthetic[/config]" (label_key "shape" or "color", see
`synthetic.zeroshot_tasks`), or an image folder ("folder:<dir>" or a directory) read by `tfds.ImageFolder`.
ImageNet-R and -A labels are indices into the 1000 ImageNet classes, as TFDS stores them.
"""

from __future__ import annotations

import dataclasses

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from clip_jax.data import builders, padding
from clip_jax.data.tf_ops import EVAL_PREPROCESS, eval_image, no_autograph
from clip_jax.preprocess import EvalTransform


@dataclasses.dataclass(frozen=True)
class EvalDatasetInfo:
    """What an evaluator needs to know about a labelled dataset."""

    name: str
    label_key: str
    num_classes: int
    class_names: tuple[str, ...] | None  # TFDS's names (e.g. WordNet ids for ImageNet), None if absent
    num_examples: int | None  # of the split asked for, when one was


def _label_feature(builder: tfds.core.DatasetBuilder, label_key: str) -> tfds.features.ClassLabel:
    features = builder.info.features
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        raise ValueError(f"{builder.name} has no ClassLabel feature {label_key!r}; it has {labels}")
    return features[label_key]


def dataset_info(
    name_or_source: str, split: str | None = None, *, data_dir: str | None = None, label_key: str = "label"
) -> EvalDatasetInfo:
    """Number of classes, TFDS class names and (given a split) its size."""
    builder = builders.get_builder(name_or_source, data_dir)
    feature = _label_feature(builder, label_key)
    names = tuple(feature.names) if feature.names else None
    num_examples = builders.split_size(builder, split) if split is not None else None
    return EvalDatasetInfo(name_or_source, label_key, feature.num_classes, names, num_examples)


def make_eval_dataset(
    name_or_source: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    data_dir: str | None = None,
    label_key: str = "label",
    image_key: str = "image",
    process_index: int | None = None,
    process_count: int | None = None,
    preprocess: str = "pil",
    transform: EvalTransform | None = None,
) -> padding.PaddedDataset:
    """Padded, per-host batches of `split`; `batch_size` is global (each host yields batch_size // hosts).
    `transform` is the model's eval transform (`clip_jax.preprocess.EvalTransform`, default OpenAI's).

    The result is re-iterable and has num_examples, num_batches, num_classes and class_names attributes.
    """
    if preprocess not in EVAL_PREPROCESS:
        raise ValueError(f"preprocess={preprocess!r}; choose from {EVAL_PREPROCESS}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    builder = builders.get_builder(name_or_source, data_dir)
    feature = _label_feature(builder, label_key)
    if image_key not in builder.info.features:
        raise ValueError(f"{builder.name} has no feature {image_key!r}: {list(builder.info.features.keys())}")
    shard = padding.host_shard(builders.split_size(builder, split), batch_size, process_index, process_count)

    def prepare(example):
        image = eval_image(example[image_key], image_size, preprocess, transform)
        return {"image": image, "label": tf.cast(example[label_key], tf.int32)}

    pad = {"image": tf.zeros([image_size, image_size, 3], tf.float32), "label": tf.constant(-1, tf.int32)}

    def build() -> tf.data.Dataset:
        ds = builders.read_host_slice(builder, split, shard, decoders={image_key: tfds.decode.SkipDecoding()})
        ds = ds.map(no_autograph(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return padding.pad_and_batch(ds, shard, pad).prefetch(2)

    return padding.PaddedDataset(
        build,
        shard,
        name=name_or_source,
        split=split,
        label_key=label_key,
        num_classes=feature.num_classes,
        class_names=tuple(feature.names) if feature.names else None,
    )
