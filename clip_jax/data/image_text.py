"""Image-text training sources: TFDS, TFRecord and webdataset shards, caption folders, the synthetic set.

A source turns the data config into an undecoded, per-host record stream for one epoch
(`Source.records(epoch)`, deterministic from the seed and epoch) and a cheap `Source.parse(record)` that
yields {"image": encoded bytes, "caption": string or list of strings}. Decoding, augmentation, shuffling and
batching are common to all sources and live in `iterator.py`.

Sources (the data config's `source` field):
- "synthetic": the embedded `clip_synthetic` TFDS dataset, built into `data_dir` on first use.
- "tfds": any TFDS dataset with an image and a caption feature, e.g. coco_captions with
  caption_key "captions/text" (several captions per image: one is sampled per image per epoch).
- "tfrecord": shards as img2dataset writes them (`{shard:05d}.tfrecord`, features "jpg" and "txt");
  `path` is a directory, a glob, or a list of files (see below). A truncated, corrupt or unopenable
  file gives the records before the damage, a warning naming it, and one skipped record per epoch.
- "webdataset": tar shards of samples grouped by key (img2dataset's "webdataset" layout: `000123.jpg`,
  `000123.txt`, `000123.json`), as LAION, DataComp and CC12M come; `path` is a list of shards spelt as
  open_clip's --train-data (`DIR/{00000..00099}.tar`, globs, comma- or "::"-separated). Samples can be
  selected by a list of keys (`keys_file`, e.g. a DataComp subset's uids) and by their .json
  (`json_filter`). A sample without image or caption, and an undecodable image, is skipped and counted;
  a damaged or unreadable shard gives the samples before the damage, a warning naming it, and one skipped
  record per epoch, as for TFRecords.
- "folder": images with a same-named .txt caption beside each (img2dataset's "files" layout), searched
  recursively under `path`.

The sharded sources ("tfrecord", "webdataset") take brace ranges, globs, directories and files, in lists
split by commas or "::"; they read local paths and whatever tf.io.gfile reaches (gs://), else fsspec (s3://
with s3fs installed), in place; their files are split over hosts, whole files per host when there are at
least as many as hosts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import braceexpand
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from clip_jax.data import builders, synthetic, webdataset

SOURCES = ("synthetic", "tfds", "tfrecord", "webdataset", "folder")
SHARDED_SOURCES = ("tfrecord", "webdataset")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# Every field the data config may have; `data_config` rejects others so that a typo fails loudly.
DATA_CONFIG_DEFAULTS: dict[str, Any] = {
    "source": "synthetic",
    "name": "",  # TFDS name ("coco_captions", "clip_synthetic/tiny"); for "synthetic" the builder config
    "split": "train",
    "data_dir": None,  # TFDS data_dir (sources "tfds" and "synthetic"); None: TFDS's default
    # "tfrecord", "webdataset": files, directories, globs, brace ranges ("{00000..00099}.tar"), separated by
    # commas or "::"; "folder": root directory
    "path": "",
    # default per source: "image" (TFDS), "jpg" (tfrecord), "jpg;png;webp" (webdataset: the first present)
    "image_key": "",
    # default per source: "captions" (synthetic), "txt" (tfrecord, webdataset); "a/b" for nested (TFDS)
    "caption_key": "",
    "resampled": False,  # "tfrecord", "webdataset": each epoch draws its files with replacement
    "keys_file": "",  # "webdataset": keep only the samples listed (one key a line, or a DataComp uid .npy)
    "keys_field": "",  # what keys_file lists: "" is the sample key (the .json "uid" for a DataComp .npy),
    # else a .json field ("a/b" for nested)
    "json_filter": "",  # "webdataset": keep samples whose .json passes all, e.g. "width>=224,NSFW==UNLIKELY"
    "shuffle_buffer": 10_000,  # records; 0 or 1 disables the record-level shuffle (files are still shuffled)
    "crop_scale": (0.9, 1.0),  # RandomResizedCrop area range
    "cycle_length": 16,  # TFRecord files or tar shards read concurrently
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
    if merged["source"] in (*SHARDED_SOURCES, "folder") and not merged["path"]:
        raise ValueError(f"data config field 'path' is required for source {merged['source']!r}")
    only = {
        "resampled": SHARDED_SOURCES,
        **dict.fromkeys(("keys_file", "keys_field", "json_filter"), ("webdataset",)),
    }
    for field, sources in only.items():
        if merged[field] and merged["source"] not in sources:
            raise ValueError(
                f"data config field {field!r} applies to source(s) {sources}, not {merged['source']!r}"
            )
    if merged["keys_field"] and not merged["keys_file"]:
        raise ValueError("data config field 'keys_field' is set but 'keys_file' is not")
    try:
        webdataset.JsonFilter(merged["json_filter"])
    except ValueError as e:
        raise ValueError(f"data config field 'json_filter': {e}") from None
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

    def num_records(self) -> int | None:
        """Records in one epoch of this host's stream, when known without reading it (else None)."""
        return None


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

    def num_records(self) -> int | None:
        try:
            return self.builder.info.splits[self.split].num_examples or None
        except (KeyError, ValueError):
            return None

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


def _gfile_reaches(path: str) -> bool:
    """Whether tf.io.gfile handles the path's scheme (local paths, gs://, ram://); else fsspec does."""
    scheme = path.split("://", 1)[0] if "://" in path else ""
    return scheme in tf.io.gfile.get_registered_schemes()


def open_file(path: str) -> IO[bytes]:
    """A seekable binary reader of a local or object-store file, through tf.io.gfile or else fsspec."""
    if _gfile_reaches(path):
        return tf.io.gfile.GFile(path, "rb")
    import fsspec

    return fsspec.open(path, "rb").open()


def _fsspec(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)


def _is_dir(path: str) -> bool:
    if _gfile_reaches(path):
        return tf.io.gfile.isdir(path)
    fs, stripped = _fsspec(path)
    return fs.isdir(stripped)


def _dir_names(path: str) -> set[str]:
    """The names in a directory (empty if it does not exist)."""
    try:
        if _gfile_reaches(path):
            return {name.rstrip("/") for name in tf.io.gfile.listdir(path)}
        fs, stripped = _fsspec(path)
        return {os.path.basename(p.rstrip("/")) for p in fs.ls(stripped, detail=False)}
    except (tf.errors.NotFoundError, FileNotFoundError):
        return set()


def _glob(pattern: str) -> list[str]:
    if _gfile_reaches(pattern):
        return tf.io.gfile.glob(pattern)
    fs, stripped = _fsspec(pattern)
    return [fs.unstrip_protocol(p) for p in fs.glob(stripped)]


def _split_path_list(path: str) -> list[str]:
    """The parts of a path list separated by "::" (open_clip) or by commas outside braces."""
    parts = []
    for chunk in path.split("::"):
        parts += re.split(r",(?![^{]*\})", chunk)
    return [p.strip() for p in parts if p.strip()]


def _list_files(path: str, suffix: str = "") -> list[str]:
    """Sorted files from directories (those ending in `suffix`), globs and names, separated by commas or
    "::", each brace-expanded as webdataset and open_clip expand shard lists ("{00000..00099}.tar").

    Named files that do not exist are left out with a warning; their directories are listed once rather
    than each name looked up, which on an object store would be one request per shard.
    """
    files: list[str] = []
    named: dict[str, list[str]] = {}  # directory: names asked for in it
    for part in _split_path_list(path):
        for name in braceexpand.braceexpand(part if "://" in part else os.path.expanduser(part)):
            if re.search(r"[*?[]", name):
                files += _glob(name)
            elif not (suffix and name.endswith(suffix)) and _is_dir(name):
                files += [os.path.join(name, f) for f in sorted(_dir_names(name)) if f.endswith(suffix)]
            else:
                named.setdefault(os.path.dirname(name), []).append(name)
    missing = []
    for directory, names in named.items():
        present = _dir_names(directory or ".")
        for name in names:
            (files if os.path.basename(name) in present else missing).append(name)
    if missing:
        logging.warning(
            "data: %d of the files named by data config path %r do not exist and are left out, e.g. %s",
            len(missing),
            path,
            ", ".join(missing[:5]),
        )
    return sorted(set(files))


def _host_files(files: list[str], process_index: int, process_count: int) -> tuple[list[str], bool]:
    """This host's files, and whether records must be sharded instead (fewer files than hosts)."""
    if len(files) >= process_count:
        return files[process_index::process_count], False
    return files, True


# Stands in for the unreadable rest of a damaged TFRecord file or tar shard (or for a file that cannot be
# opened): the number of records lost there is unknowable, so the file's stream ends with this one record
# (for a tar shard: its image), which parse rejects and the iterator then counts as skipped, like any
# corrupt record. Field number 0 is invalid protobuf, so no tf.train.Example serialises to it; no image
# format starts with a zero byte either.
DAMAGED_FILE_MARKER = b"\x00clip_jax: unreadable shard data"
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


def _assert_readable(value: tf.Tensor) -> tf.Operation:
    """Fails on DAMAGED_FILE_MARKER, so that the record stands for a skipped (and counted) one."""
    return tf.debugging.Assert(
        tf.not_equal(value, DAMAGED_FILE_MARKER), ["unreadable data (see the warning naming the file)"]
    )


class ShardedSource(Source):
    """Files of records, split over hosts: whole files per host, or, when there are fewer files than hosts,
    every host reads all of them and keeps every process_count-th record. Each epoch reads the files in a
    seeded order (drawn with replacement if `resampled`), `cycle_length` at a time, records interleaved.
    Subclasses say what one file holds (`read_file`) and how a record parses."""

    kind = ""  # what the files are, for messages
    suffix = ""  # the files a directory named in `path` contributes

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        files = _list_files(config["path"], suffix=self.suffix)
        if not files:
            raise ValueError(f"no {self.kind} files found at data config path {config['path']!r}")
        self.check_files(files)
        self.files, self.shard_records = _host_files(files, process_index, process_count)

    def check_files(self, files: list[str]) -> None:
        """Refuse, at start, files this source cannot read (all hosts see the same list)."""

    def read_file(self, path: tf.Tensor) -> tf.data.Dataset:
        """The records of one file, ending in DAMAGED_FILE_MARKER if it is damaged or unreadable."""
        raise NotImplementedError

    def records(self, epoch: int) -> tf.data.Dataset:
        # The same file order on every host: when records are dealt out (`shard`), the hosts must agree on
        # the stream they deal from. Hosts with files of their own shuffle them no worse for it.
        rng = np.random.default_rng(epoch_seed(self.seed, epoch, 0, salt=1))
        count = len(self.files)
        # Resampled, as open_clip's --dataset-resampled: an epoch is as many files, drawn with replacement.
        order = rng.integers(count, size=count) if self.config["resampled"] else rng.permutation(count)
        files = [self.files[i] for i in order]
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.autograph.experimental.do_not_convert(self.read_file),
            cycle_length=min(self.config["cycle_length"], len(files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if self.shard_records:
            ds = ds.shard(self.process_count, self.process_index)
        return ds


class TfrecordSource(ShardedSource):
    """TFRecord shards of tf.train.Example (img2dataset layout: "jpg" bytes, "txt" caption)."""

    kind = "TFRecord"
    suffix = ".tfrecord"

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        self.image_key = config["image_key"] or "jpg"
        self.caption_key = config["caption_key"] or "txt"

    def read_file(self, path: tf.Tensor) -> tf.data.Dataset:
        return read_tfrecord_file(path)

    def parse(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
        # Missing features parse as "": the record is then skipped and counted, like any undecodable one.
        spec = {
            self.image_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
            self.caption_key: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        # A damaged file's marker fails here, explicitly, and is then skipped and counted.
        with tf.control_dependencies([_assert_readable(record)]):
            example = tf.io.parse_single_example(record, spec)
        return {"image": example[self.image_key], "caption": example[self.caption_key]}


# Reading a shard fails with these where its data is damaged or the file cannot be read.
_SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, tf.errors.OpError)
_GENERATOR_CHUNK = 32  # samples per element of a shard's generator


class WebdatasetSource(ShardedSource):
    """webdataset tar shards: per sample key an image ("jpg;png;webp", the first present), a caption
    ("txt") and optionally a .json, which `keys_file` and `json_filter` select samples by.

    Each shard is streamed by Python's tarfile in a generator (tf.data's from_generator, one per shard under
    the interleave), straight from the file system or object store. A sample the filters leave out never
    enters the stream; one that lacks its image or caption, or has an unreadable .json, enters it empty
    and is skipped and counted by the iterator. A damaged or unreadable shard gives the samples before the
    damage, then DAMAGED_FILE_MARKER, with a warning naming the shard and the error.
    """

    kind = "webdataset"
    suffix = ".tar"

    def __init__(self, config: dict[str, Any], seed: int, process_index: int, process_count: int) -> None:
        super().__init__(config, seed, process_index, process_count)
        self.image_fields = _field_list(config["image_key"] or "jpg;png;webp")
        self.caption_fields = _field_list(config["caption_key"] or "txt")
        self.json_filter = webdataset.JsonFilter(config["json_filter"])
        self.keys: webdataset.KeySet | None = None
        self.keys_field = ""
        if config["keys_file"]:
            try:
                with open_file(config["keys_file"]) as f:
                    self.keys = webdataset.KeySet.from_bytes(f.read(), config["keys_file"])
            except (OSError, tf.errors.OpError) as e:
                raise ValueError(
                    f"data config keys_file {config['keys_file']!r} cannot be read: {e}"
                ) from None
            self.keys_field = config["keys_field"] or self.keys.default_field
        self.needs_json = bool(self.json_filter) or (self.keys is not None and self.keys_field != "__key__")
        self.fields = {*self.image_fields, *self.caption_fields, *(("json",) if self.needs_json else ())}

    def check_files(self, files: list[str]) -> None:
        compressed = [f for f in files if f.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"))]
        if compressed:
            raise ValueError(
                f"data config path {self.config['path']!r} names compressed tars ({compressed[0]}, ...); "
                f"the webdataset source reads uncompressed .tar shards (img2dataset's output)"
            )

    def read_file(self, path: tf.Tensor) -> tf.data.Dataset:
        spec = tf.TensorSpec([None], tf.string)
        chunks = tf.data.Dataset.from_generator(self._chunks, args=(path,), output_signature=(spec, spec))
        return chunks.unbatch()

    def _chunks(self, path: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`shard_samples` in chunks: from_generator costs about 0.5 ms of CPU per element it hands over,
        as much as tarfile's reading of a sample; per chunk of 32 that is ~15 us a sample."""
        chunk: list[tuple[bytes, bytes]] = []
        for record in self.shard_samples(path):
            chunk.append(record)
            if len(chunk) == _GENERATOR_CHUNK:
                yield tuple(np.array(column, dtype=object) for column in zip(*chunk, strict=True))
                chunk = []
        if chunk:
            yield tuple(np.array(column, dtype=object) for column in zip(*chunk, strict=True))

    def shard_samples(self, path: Any) -> Iterator[tuple[bytes, bytes]]:
        """(image, caption) of each selected sample of one shard, then DAMAGED_FILE_MARKER if it breaks."""
        name = _path_text(path)
        samples = 0
        try:
            with open_file(name) as f:
                for key, fields in webdataset.iter_samples(f, self.fields):
                    samples += 1
                    record = self._select(key, fields)
                    if record is not None:
                        yield record
        except _SHARD_ERRORS as e:
            logging.warning(
                "data: webdataset shard %s is unreadable after %d samples (%s: %s); the rest of it is "
                "skipped and counts as one skipped record",
                name,
                samples,
                type(e).__name__,
                e,
            )
            yield DAMAGED_FILE_MARKER, b""

    def _select(self, key: str, fields: dict[str, bytes]) -> tuple[bytes, bytes] | None:
        """The sample's (image, caption), b"" for what it lacks; None if the filters leave it out."""
        meta = None
        if self.needs_json and "json" in fields:
            try:
                meta = json.loads(fields["json"])
            except ValueError:  # a corrupt .json: the sample is skipped and counted, not filtered out
                return b"", b""
        if self.keys is not None:
            if self.keys_field == "__key__":
                value = key
            else:
                try:
                    value = get_path(meta, self.keys_field)
                except (KeyError, TypeError):
                    return None
            if value not in self.keys:
                return None
        if self.json_filter and not self.json_filter(meta):
            return None
        image = next((fields[f] for f in self.image_fields if fields.get(f)), b"")
        caption = next((fields[f] for f in self.caption_fields if f in fields), b"")
        return image, caption

    def parse(self, record: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        image, caption = record
        with tf.control_dependencies([_assert_readable(image)]):
            return {"image": tf.identity(image), "caption": caption}


def _field_list(spec: str) -> list[str]:
    """["jpg", "png"] for "jpg;png" (webdataset's spelling of alternatives; a leading dot is allowed)."""
    return [f.strip().lstrip(".").lower() for f in spec.split(";") if f.strip()]


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

    def num_records(self) -> int | None:
        return len(self.pairs)

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
        "webdataset": WebdatasetSource,
        "folder": FolderSource,
    }[config["source"]]
    return cls(config, seed, process_index, process_count)
