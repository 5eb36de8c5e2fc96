"""Resolve a dataset name to a TFDS builder: a TFDS name, the embedded synthetic set, or an image folder."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from clip_jax.data import synthetic

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
