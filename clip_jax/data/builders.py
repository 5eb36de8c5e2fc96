"""Resolve a dataset name to a TFDS builder (a TFDS name, the synthetic set, an image folder) and read
per-host slices of its splits."""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from clip_jax.data import padding, synthetic

_FOLDER_PREFIXES = ("folder:", "image_folder:")


def synthetic_builder(config: str = "default", data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The prepared `clip_synthetic/<config>` builder (generated into `data_dir` on first use)."""
    return synthetic.prepare_synthetic(data_dir, config)


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builder for `name`.

    - "clip_synthetic" or "clip_synthetic/<config>": the embedded dataset, generated if missing;
    - "folder:<dir>", "image_folder:<dir>" or an existing directory: `tfds.ImageFolder(dir)`, whose split
      names are the sub-directories and labels the class folders below them;
    - anything else: `tfds.builder(name, data_dir=data_dir)` (e.g. "imagenet2012", "cifar10",
      "imagenet_r", "coco_captions"); it must already be prepared in `data_dir` (no downloads here).
    """
    base, _, config = name.partition("/")
    if base == synthetic.ClipSynthetic.name:
        return synthetic_builder(config or "default", data_dir)
    for prefix in _FOLDER_PREFIXES:
        if name.startswith(prefix):
            return tfds.ImageFolder(os.path.expanduser(name[len(prefix) :]))
    if os.path.isdir(os.path.expanduser(name)):
        return tfds.ImageFolder(os.path.expanduser(name))
    return tfds.builder(name, data_dir=data_dir)


def _has_split_metadata(builder: tfds.core.DatasetBuilder, split: str) -> bool:
    """Whether TFDS can slice `split` by example index (a prepared dataset, not an ImageFolder or a mock)."""
    if isinstance(builder, tfds.ImageFolder) or "[" in split:
        return False
    try:
        return split in builder.info.splits
    except Exception:  # noqa: BLE001 - a builder without metadata just takes the generic path
        return False


def _read_config() -> tfds.ReadConfig:
    # Same order on every host and every run: the per-host slices below depend on it.
    options = tf.data.Options()
    options.deterministic = True
    return tfds.ReadConfig(options=options, try_autocache=False)


def split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of examples in `split` (from the metadata, else from the dataset: cardinality or a count)."""
    if _has_split_metadata(builder, split):
        return builder.info.splits[split].num_examples
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=_read_config())
    return padding.count_examples(ds)


def read_host_slice(
    builder: tfds.core.DatasetBuilder, split: str, shard: padding.HostShard, decoders: Any = None
) -> tf.data.Dataset:
    """The examples [shard.start, shard.stop) of `split`, in a fixed order.

    Prepared TFDS datasets are sliced by TFDS (reading only this host's records); other builders (image
    folders, mocks, splits that are already slices) read the split and skip to the slice, which reads but
    does not decode the records before it.
    """
    if _has_split_metadata(builder, split) and shard.stop > shard.start:
        return builder.as_dataset(
            split=f"{split}[{shard.start}:{shard.stop}]",
            shuffle_files=False,
            decoders=decoders,
            read_config=_read_config(),
        )
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders, read_config=_read_config())
    return ds.skip(shard.start).take(shard.stop - shard.start)
