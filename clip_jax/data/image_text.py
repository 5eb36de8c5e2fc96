"""Image-text training sources: TFDS datasets, img2dataset TFRecord shards, caption folders, the synthetic set.

A source turns the data config into an undecoded, per-host record stream for one epoch
(`Source.records(epoch)`, deterministic from the seed and epoch) and a cheap `Source.parse(record)` that
yields {"image": encoded bytes, "caption": string or list of strings}. Decoding, augmentation, shuffling and
batching are common to all sources and live in `iterator.py`.

Sources (the data config's `source` field):
- "synthetic": the embedded `clip_synthetic` TFDS dataset, built into `data_dir` on first use.
- "tfds": any TFDS dataset with an image and a caption feature, e.g. coco_captions with
  caption_key "captions/text" (several captions per image: one is sampled per image per epoch).
- "tfrecord": shards as img2dataset writes them (`{shard:05d}.tfrecord`, features "jpg" and "txt");
  `path` is a directory, a glob, or a comma-separated list of files.
- "folder": images with a same-named .txt caption beside each (img2dataset's "files" layout), searched
  recursively under `path`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from clip_jax.data import builders, synthetic

SOURCES = ("synthetic", "tfds", "tfrecord", "folder")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# Every field the data config may have; `data_config` rejects others so that a typo fails loudly.
DATA_CONFIG_DEFAULTS: dict[str, Any] = {
    "source": "synthetic",
    "name": "",  # TFDS name ("coco_captions", "clip_synthetic/tiny"); for "synthetic" the builder config
    "split": "train",
    "data_dir": None,  # TFDS data_dir (sources "tfds" and "synthetic"); None: TFDS's default
    "path": "",  # "tfrecord": directory / glob / comma-separated files; "folder": root directory
    "image_key": "",  # default per source: "image" (TFDS), "jpg" (tfrecord)
    "caption_key": "",  # default per source: "captions" (synthetic), "txt" (tfrecord); "a/b" for nested
    "shuffle_buffer": 10_000,  # records; 0 or 1 disables the record-level shuffle (files are still shuffled)
    "crop_scale": (0.9, 1.0),  # RandomResizedCrop area range
    "cycle_length": 16,  # TFRecord files read concurrently
    "num_parallel_calls": -1,  # decode/augment parallelism; -1 is tf.data.AUTOTUNE
    "prefetch": 2,  # batches prepared ahead
}
# Caption features tried, in order, when a TFDS dataset's caption_key is not given.
_CAPTION_KEY_GUESSES = ("caption", "captions/text", "captions", "text")


def default_data_config() -> ml_collections.ConfigDict:
    """A data config with every field at its default, for config files to start from."""
    return ml_collections.ConfigDict(dict(DATA_CONFIG_DEFAULTS))


def data_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's fields over the defaults, validated: unknown fields or sources raise ValueError."""
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = sorted(set(given) - set(DATA_CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown data config field(s) {unknown}; known fields: {sorted(DATA_CONFIG_DEFAULTS)}"
        )
    merged = {**DATA_CONFIG_DEFAULTS, **given}
    if merged["source"] not in SOURCES:
        raise ValueError(f"data config field 'source' is {merged['source']!r}; expected one of {SOURCES}")
    if merged["source"] in ("tfrecord", "folder") and not merged["path"]:
        raise ValueError(f"data config field 'path' is required for source {merged['source']!r}")
    if merged["source"] == "tfds" and not merged["name"]:
        raise ValueError("data config field 'name' is required for source 'tfds'")
    return merged


def epoch_seed(seed: int, epoch: int, process_index: int, salt: int = 0) -> int:
    """A 31-bit seed for (seed, epoch, host, salt): each epoch reshuffles, each host differently."""
    state = np.random.SeedSequence([seed, epoch, process_index, salt]).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def get_path(example: Mapping[str, Any], key: str) -> Any:
    """example["a"]["b"] for key "a/b"."""
    value = example
    for part in key.split("/"):
        value = value[part]
    return value


def _nested(key: str, leaf: Any) -> dict:
    """{"a": {"b": leaf}} for key "a/b" (TFDS decoders are nested like the features)."""
    out: Any = leaf
    for part in reversed(key.split("/")):
        out = {part: out}
    return out


class Source:
    """Base class: `records(epoch)` is this host's undecoded stream; `parse` extracts image and caption."""

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        self.config = config
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count

    def records(self, epoch: int) -> tf.data.Dataset:
        raise NotImplementedError

    def parse(self, record: Any) -> dict[str, tf.Tensor]:
        return record


class TfdsSource(Source):
    """A TFDS dataset; each host reads its even share of the split (tfds.split_for_jax_process)."""

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        if config["source"] == "synthetic":
            # "tiny", or the full "clip_synthetic/tiny"
            name = config["name"].removeprefix(synthetic.ClipSynthetic.name).strip("/") or "default"
            self.builder = builders.synthetic_builder(name, config["data_dir"])
        else:
            self.builder = builders.get_builder(config["name"], config["data_dir"])
        features = self.builder.info.features
        self.image_key = config["image_key"] or "image"
        self.caption_key = config["caption_key"] or _guess_caption_key(features)
        for key in (self.image_key, self.caption_key):
            try:
                get_path(features, key)
            except (KeyError, TypeError):
                raise ValueError(
                    f"{self.builder.name} has no feature {key!r} (set data config image_key/caption_key); "
                    f"features: {list(features.keys())}"
                ) from None
        self.split = tfds.split_for_jax_process(
            config["split"], process_index=process_index, process_count=process_count
        )

    def records(self, epoch: int) -> tf.data.Dataset:
        read_config = tfds.ReadConfig(
            shuffle_seed=epoch_seed(self.seed, epoch, self.process_index, salt=1), try_autocache=False
        )
        ds = self.builder.as_dataset(
            split=self.split,
            shuffle_files=True,
            read_config=read_config,
            decoders=_nested(self.image_key, tfds.decode.SkipDecoding()),
        )
        image_key, caption_key = self.image_key, self.caption_key
        select = tf.autograph.experimental.do_not_convert(
            lambda ex: {"image": get_path(ex, image_key), "caption": get_path(ex, caption_key)}
        )
        return ds.map(
            select,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


def _guess_caption_key(features: Any) -> str:
    for key in _CAPTION_KEY_GUESSES:
        try:
            get_path(features, key)
            return key
        except (KeyError, TypeError):
            continue
    raise ValueError(
        f"cannot guess the caption feature; set data config caption_key ({list(features.keys())})"
    )


def _list_files(path: str, suffix: str = "") -> list[str]:
    """Sorted files from a directory (those ending in `suffix`), a glob, or a comma-separated list."""
    files: list[str] = []
    for part in (p.strip() for p in path.split(",")):
        if not part:
            continue
        part = os.path.expanduser(part)
        if os.path.isdir(part):
            files += [os.path.join(part, f) for f in os.listdir(part) if f.endswith(suffix)]
        else:
            files += glob.glob(part)
    return sorted(set(files))


def _host_files(files: list[str], process_index: int, process_count: int) -> tuple[list[str], bool]:
    """This host's files, and whether records must be sharded instead (fewer files than hosts)."""
    if len(files) >= process_count:
        return files[process_index::process_count], False
    return files, True


class TfrecordSource(Source):
    """TFRecord shards of tf.train.Example (img2dataset layout: "jpg" bytes, "txt" caption)."""

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        files = _list_files(config["path"], suffix=".tfrecord")
        if not files:
            raise ValueError(f"no TFRecord files found at data config path {config['path']!r}")
        self.files, self.shard_records = _host_files(files, process_index, process_count)
        self.image_key = config["image_key"] or "jpg"
        self.caption_key = config["caption_key"] or "txt"

    def records(self, epoch: int) -> tf.data.Dataset:
        # The same file order on every host: when records are dealt out (`shard`), the hosts must agree on
        # the stream they deal from. Hosts with files of their own shuffle them no worse for it.
        order = np.random.default_rng(epoch_seed(self.seed, epoch, 0, salt=1))
        files = [self.files[i] for i in order.permutation(len(self.files))]
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            # A damaged shard loses its unreadable tail, not the run.
            lambda f: tf.data.TFRecordDataset(f).ignore_errors(),
            cycle_length=min(self.config["cycle_length"], len(files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if self.shard_records:
            ds = ds.shard(self.process_count, self.process_index)
        return ds

    def parse(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
        # Missing features parse as "": the record is then skipped and counted, like any undecodable one.
        spec = {
            self.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
            self.caption_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        example = tf.io.parse_single_example(record, spec)
        return {"image": example[self.image_key], "caption": example[self.caption_key]}


class FolderSource(Source):
    """Image files with a same-named .txt caption beside each, anywhere under `path`."""

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        root = os.path.expanduser(config["path"])
        if not os.path.isdir(root):
            raise ValueError(f"data config path {root!r} is not a directory")
        pairs, missing = [], 0
        for directory, _, names in os.walk(root):
            names = set(names)
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext.lower() in IMAGE_EXTENSIONS:
                    if stem + ".txt" in names:
                        pairs.append((os.path.join(directory, name), os.path.join(directory, stem + ".txt")))
                    else:
                        missing += 1
        if missing:
            logging.warning("folder source %s: skipped %d images that have no .txt caption", root, missing)
        if not pairs:
            raise ValueError(f"no image with a .txt caption found under data config path {root!r}")
        pairs.sort()
        self.pairs = pairs[process_index::process_count]
        if not self.pairs:
            raise ValueError(
                f"process {process_index} of {process_count} got none of the {len(pairs)} images"
            )

    def records(self, epoch: int) -> tf.data.Dataset:
        # The file list is small, so each epoch is a full permutation of it (no buffer needed).
        order = np.random.default_rng(epoch_seed(self.seed, epoch, self.process_index, salt=1))
        pairs = [self.pairs[i] for i in order.permutation(len(self.pairs))]
        images, captions = zip(*pairs, strict=True)
        return tf.data.Dataset.from_tensor_slices({"image": list(images), "caption": list(captions)})

    def parse(self, record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"image": tf.io.read_file(record["image"]), "caption": tf.io.read_file(record["caption"])}


def make_source(config: dict[str, Any], seed: int, process_index: int, process_count: int) -> Source:
    """The Source for a validated data config (see `data_config`)."""
    cls = {
        "synthetic": TfdsSource,
        "tfds": TfdsSource,
        "tfrecord": TfrecordSource,
        "folder": FolderSource,
    }[config["source"]]
    return cls(config, seed, process_index, process_count)
