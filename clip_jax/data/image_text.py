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
  `path` is a directory, a glob, or a comma-separated list of files. A truncated, corrupt or unopenable
  file gives the records before the damage, a warning naming it, and one skipped record per epoch.
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


# Stands in for the unreadable rest of a damaged TFRecord file (or for a file that cannot be opened): the
# number of records lost there is unknowable, so the file's stream ends with this one record, which
# `TfrecordSource.parse` rejects and the iterator then counts as skipped, like any corrupt record. Field
# number 0 is invalid protobuf, so no tf.train.Example serialises to it.
DAMAGED_FILE_MARKER = b"\x00clip_jax: unreadable TFRecord data"
# Bytes a record takes in a file beyond its data: uint64 length, CRC of the length, CRC of the data.
_RECORD_FRAMING = 16
# Records per accounting step; a file's stream holds up to this many records in memory.
_ACCOUNTING_CHUNK = 32


def _path_text(path: Any) -> str:
    """A path from tf.numpy_function (bytes, or a 0-d array of bytes when run eagerly) as text."""
    return np.asarray(path).item().decode("utf-8", errors="replace")


def _openable_size(path: bytes) -> np.int64:
    """The file's size in bytes, or -1 (with a warning) if it cannot be opened and read."""
    name = _path_text(path)
    try:
        size = tf.io.gfile.stat(name).length
        with tf.io.gfile.GFile(name, "rb") as f:
            f.read(1)
    except (tf.errors.OpError, OSError) as e:
        logging.warning("data: cannot read TFRecord file %s (%s); it counts as one skipped record", name, e)
        return np.int64(-1)
    return np.int64(size)


def _report_damage(path: bytes, consumed: np.int64, size: np.int64, records: np.int64) -> bytes:
    """Warn that reading `path` stopped early, with the reader's error; returns DAMAGED_FILE_MARKER."""
    name = _path_text(path)
    if size >= 0:  # an unopenable file (size -1) was reported when it was opened
        # Only damaged files are read again, in Python, for the error tf.data's ignore_errors discarded.
        error = f"read stopped at byte {consumed} without an error when read again"
        try:
            for _ in tf.compat.v1.io.tf_record_iterator(name):
                pass
        except (tf.errors.OpError, OSError) as e:
            error = f"{type(e).__name__}: {e}"
        logging.warning(
            "data: TFRecord file %s is damaged after %d records (byte %d of %d): %s; the rest of the file "
            "is skipped and counts as one skipped record",
            name,
            records,
            consumed,
            size,
            error,
        )
    return DAMAGED_FILE_MARKER


def read_tfrecord_file(path: tf.Tensor) -> tf.data.Dataset:
    """The records of one TFRecord file, then DAMAGED_FILE_MARKER if the file is truncated, corrupt
    (bad length or CRC) or cannot be opened; a warning names the file and the error.

    Damage is found by accounting rather than by catching errors in Python, so reading stays in tf.data's
    C++: `TFRecordDataset.ignore_errors()` ends a file at its first unreadable record, and the file was read
    to its end exactly when its records' framed sizes add up to its size. One Python call per file (its
    size) and one per damaged file (the warning) are all that run outside the graph. The outcome depends
    only on the file's bytes, not on timing, so a resumed run sees the same stream.
    """
    size = tf.numpy_function(_openable_size, [path], tf.int64, stateful=True)
    size.set_shape([])
    # TFRecordDataset retries a file it cannot open forever, under ignore_errors too (it spins): such a
    # file is not handed to it at all (an empty list of names), and its size of -1 reports it as damaged.
    names = tf.reshape(path, [1])[: tf.cast(size >= 0, tf.int32)]
    # After the file's chunks, an empty one with -1 bytes: the end, where the sizes are compared.
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(-1, tf.int64)))

    @tf.autograph.experimental.do_not_convert
    def framed_bytes(records):
        return records, tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64) + _RECORD_FRAMING)

    @tf.autograph.experimental.do_not_convert
    def account(state, chunk):
        consumed, count = state
        records, num_bytes = chunk
        damaged = (num_bytes < 0) & tf.not_equal(consumed, size)
        records = tf.cond(
            damaged,
            lambda: tf.reshape(
                tf.numpy_function(_report_damage, [path, consumed, size, count], tf.string, stateful=True),
                [1],
            ),
            lambda: records,
        )
        records = tf.ensure_shape(records, [None])
        state = (consumed + tf.maximum(num_bytes, 0), count + tf.size(records, out_type=tf.int64))
        return state, records

    zero = tf.constant(0, tf.int64)
    # Accounting per chunk of records, not per record: a per-record scan paid tf.data's per-element cost on
    # every record and cut the raw read rate about 15x; per chunk it adds ~12 us of CPU per record, well
    # under 1% of decoding and augmenting it.
    return (
        tf.data.TFRecordDataset(names)
        .ignore_errors()
        .batch(_ACCOUNTING_CHUNK)
        .map(framed_bytes)
        .concatenate(end)
        .scan((zero, zero), account)
        .unbatch()
    )


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
            tf.autograph.experimental.do_not_convert(read_tfrecord_file),
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
        # A damaged file's marker fails here, explicitly, and is then skipped and counted.
        valid = tf.debugging.Assert(
            tf.not_equal(record, DAMAGED_FILE_MARKER), ["unreadable TFRecord data (see the warning)"]
        )
        with tf.control_dependencies([valid]):
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
