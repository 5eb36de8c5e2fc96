"""The training input: an endless, per-host, deterministic, resumable iterator of CLIP batches.

Per epoch and host the pipeline is

    records(epoch)                  files in a seeded order (TFDS: its file shuffle with a seeded ReadConfig)
      -> shuffle(buffer, seed)      seed from (seed, epoch, host): every epoch is reshuffled
      -> enumerate -> skip(position)   record index within the epoch; a resumed run skips what it consumed
      -> parse, pick one caption    (stateless, seeded by (seed, epoch, index))
      -> ignore_errors, drop empty captions
      -> decode, random resized crop (stateless, seeded by (seed, epoch, index)), normalise
      -> ignore_errors -> batch(local) -> tokenize -> prefetch

so a batch is a pure function of (seed, epoch, host, data); nothing depends on thread timing.

Iterator position. `TrainIterator.get_state()` is a JSON-serialisable dict {"epoch", "position", ...}
where `position` counts the records of the epoch's shuffled stream consumed so far, read from the record
index of the last example of the last batch handed out (prefetched batches do not count). `set_state`
rebuilds the epoch's stream and skips `position` undecoded records, which is cheap, and exact even when
corrupt records were dropped. The state is per process: in a multi-host run, save each process's own
state (its shard, and so its position, differs).

Corrupt records (undecodable image, unreadable file, missing or empty caption) are dropped and counted:
`num_skipped` is the running total, a warning gives the count at the end of every epoch that had any and
on `close()`. A TFRecord file that is truncated, corrupt (bad length or CRC) or cannot be opened yields
the records before the damage and then one marker record that parse rejects, so it counts once per epoch
(how many records its unreadable rest held is unknowable) through the same index gaps, and a warning
names the file and the error (`image_text.read_tfrecord_file`). Batches never span epochs: each epoch's
incomplete last batch is dropped.

Epoch boundaries. A fresh pipeline spends ~1 s before its first batch (filling the shuffle buffer,
starting the parallel maps; measured on the main job's 2-core machine), a stall every epoch of a small
dataset. So `LOOKAHEAD_BATCHES` before an epoch's expected end (its length is the source's record count,
or the previous epoch's, else unknown and the next epoch is opened at once), the next epoch's iterator is
created with tf.data's `experimental_warm_start`: its own threads fill it in the background, and the
boundary costs only the handover. No Python thread is involved; only the order of the work changes, never
the batches. Until the boundary, two pipelines (two shuffle buffers) are held in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from clip_jax.data import image_text
from clip_jax.data.tf_ops import Tokenizer, decode_image, no_autograph, tf_tokenize
from clip_jax.preprocess import tf_train_transform

STATE_VERSION = 1
# Batches before an epoch's expected end at which the next epoch's pipeline is opened: enough for its
# warm-up (~1 s) at any step time, few enough that a second shuffle buffer is held only briefly.
LOOKAHEAD_BATCHES = 16


def _pick_caption(caption: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One caption: the string itself, or a seeded uniform choice from a list ("" if the list is empty)."""
    if caption.shape.rank == 0:
        return caption
    count = tf.size(caption)
    index = tf.random.stateless_uniform([], seed, minval=0, maxval=tf.maximum(count, 1), dtype=tf.int32)
    return tf.cond(count > 0, lambda: tf.gather(tf.reshape(caption, [-1]), index), lambda: tf.constant(""))


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Endless iterator of {"image": float32 [B, S, S, 3], "text": int32 [B, L]} with a resumable position."""

    def __init__(
        self,
        source: image_text.Source,
        config: dict[str, Any],
        *,
        local_batch_size: int,
        image_size: int,
        context_length: int,
        seed: int,
        fingerprint: dict[str, Any],
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self._source = source
        self.tokenizer = tokenizer  # the model's (clip_jax.inputs); None: CLIP's BPE
        self._config = config
        self.local_batch_size = local_batch_size
        self.image_size = image_size
        self.context_length = context_length
        self.seed = seed
        self._fingerprint = fingerprint
        self._epoch = 0
        self._position = 0
        self._batches = 0
        self._skipped = 0
        self._epoch_skipped = 0
        self._epoch_batches = 0
        self._iterator: Iterator | None = None
        self._pulled: tf.Variable | None = None  # records read by the current epoch's pipeline
        self._epoch_start = 0  # position the current epoch's pipeline started from
        self._ahead: tuple[int, Iterator, tf.Variable] | None = None  # the next epoch's, warming up
        self._epoch_records = source.num_records()  # records of an epoch, when known
        self._tail_examples = 0  # examples in the epoch's incomplete last batch (dropped)

    # -- position -------------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Where the next batch comes from, as a JSON-serialisable dict (per process)."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "position": self._position,
            "batches": self._batches,
            "skipped": self._skipped,
            **self._fingerprint,
        }

    def set_state(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Continue from `state` (from `get_state`), exactly as the iterator that produced it would have.

        With strict=True a state from a differently configured iterator (seed, batch size, host index or
        count, source) raises ValueError, since its position would not mean the same batches here; with
        strict=False the epoch and position are taken as they are.
        """
        if isinstance(state, str):
            state = json.loads(state)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')} != {STATE_VERSION}")
        if strict:
            differ = {k: (state.get(k), v) for k, v in self._fingerprint.items() if state.get(k) != v}
            if differ:
                raise ValueError(f"data iterator state is from another configuration (saved, now): {differ}")
        self.close(log=False)
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._batches = int(state.get("batches", 0))
        self._skipped = int(state.get("skipped", 0))
        self._epoch_skipped = 0
        self._epoch_batches = 0

    @property
    def num_skipped(self) -> int:
        """Records dropped so far (undecodable image, missing or empty caption, and one per damaged or
        unopenable TFRecord file per epoch); part of the state, so it continues across a resume."""
        return self._skipped

    @property
    def records_per_epoch(self) -> int | None:
        """Records this process reads per epoch, when the source knows (for the trainer's log)."""
        return self._epoch_records

    @property
    def epoch(self) -> int:
        return self._epoch

    # -- pipeline -------------------------------------------------------------------------------------------

    def _epoch_dataset(
        self, epoch: int, position: int, warm_start: bool = False
    ) -> tuple[tf.data.Dataset, tf.Variable]:
        """The epoch's batches from `position` on, and a counter of the records pulled from the stream;
        with warm_start, the pipeline starts filling as soon as an iterator over it is created."""
        config, source = self._config, self._source
        parallel = config["num_parallel_calls"]
        parallel = tf.data.AUTOTUNE if parallel is None or parallel < 0 else parallel
        base_seed = tf.constant([self.seed, epoch], tf.int64)
        image_size, scale = self.image_size, tuple(config["crop_scale"])

        ds = source.records(epoch)
        if config["shuffle_buffer"] and config["shuffle_buffer"] > 1:
            shuffle_seed = image_text.epoch_seed(self.seed, epoch, source.process_index, salt=2)
            ds = ds.shuffle(config["shuffle_buffer"], seed=shuffle_seed, reshuffle_each_iteration=False)
        ds = ds.enumerate()
        if position:
            ds = ds.skip(position)
        # Counts every record read after the skip, corrupt or not: at the end of the epoch it tells how many
        # records were dropped after the last full batch, so each epoch's skip count is exact.
        pulled = tf.Variable(tf.constant(0, tf.int64), trainable=False)

        def count(index, record):
            with tf.control_dependencies([pulled.assign_add(1)]):
                return tf.identity(index), record

        def parse(index, record):
            seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(base_seed, index), 2
            )
            example = source.parse(record)
            caption = _pick_caption(tf.convert_to_tensor(example["caption"]), seeds[0])
            return {"index": index, "image": example["image"], "caption": caption, "seed": seeds[1]}

        def augment(example):
            image = tf_train_transform(
                decode_image(example["image"]), image_size, scale=scale, seed=example["seed"]
            )
            return {"index": example["index"], "image": image, "caption": example["caption"]}

        def tokenize_batch(batch):
            text = tf_tokenize(batch["caption"], context_length, self.tokenizer)
            return {"index": batch["index"], "image": batch["image"], "text": text}

        def has_caption(example):
            return tf.strings.length(tf.strings.strip(example["caption"])) > 0

        context_length = self.context_length
        ds = ds.map(no_autograph(count))
        ds = ds.map(no_autograph(parse), num_parallel_calls=parallel, deterministic=True).ignore_errors()
        ds = ds.filter(no_autograph(has_caption))
        ds = ds.map(no_autograph(augment), num_parallel_calls=parallel, deterministic=True).ignore_errors()
        # The incomplete last batch comes through (and is dropped in __next__) to count its records.
        ds = ds.batch(self.local_batch_size)
        ds = ds.map(no_autograph(tokenize_batch), num_parallel_calls=parallel, deterministic=True)
        ds = ds.prefetch(config["prefetch"])
        options = tf.data.Options()
        options.deterministic = True
        options.experimental_warm_start = warm_start
        return ds.with_options(options), pulled

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._iterator is None:
                if self._ahead is not None and (self._ahead[0], self._position) == (self._epoch, 0):
                    _, self._iterator, self._pulled = self._ahead
                else:
                    ds, self._pulled = self._epoch_dataset(self._epoch, self._position)
                    self._iterator = ds.as_numpy_iterator()
                self._ahead = None
                self._epoch_start = self._position
                self._tail_examples = 0
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._end_epoch()
                continue
            if len(batch["index"]) < self.local_batch_size:
                # The epoch's incomplete last batch: dropped, so batches never span epochs.
                self._tail_examples = len(batch["index"])
                continue
            end = int(batch["index"][-1]) + 1
            self._count_skipped((end - self._position) - self.local_batch_size)
            self._position = end
            self._batches += 1
            self._epoch_batches += 1
            if self._ahead is None and self._near_epoch_end():
                ds, pulled = self._epoch_dataset(self._epoch + 1, 0, warm_start=True)
                self._ahead = (self._epoch + 1, ds.as_numpy_iterator(), pulled)
            return {"image": batch["image"], "text": batch["text"]}

    def _near_epoch_end(self) -> bool:
        """Whether the epoch is within LOOKAHEAD_BATCHES of its expected end (or its length is unknown)."""
        if self._epoch_records is None:
            return True
        return self._position + LOOKAHEAD_BATCHES * self.local_batch_size >= self._epoch_records

    def _count_skipped(self, count: int) -> None:
        self._skipped += count
        self._epoch_skipped += count

    def _end_epoch(self) -> None:
        if self._epoch_batches == 0 and self._epoch_start == 0:
            raise ValueError(
                f"epoch {self._epoch} of process {self._source.process_index} produced no full batch of "
                f"{self.local_batch_size} examples: the data is too small for the batch size (or all corrupt)"
            )
        # Records after the last full batch: the dropped incomplete batch, and corrupt ones among them.
        epoch_end = self._epoch_start + int(self._pulled.numpy())
        self._count_skipped(epoch_end - self._position - self._tail_examples)
        if self._epoch_start == 0:  # a whole epoch: the next one is as long (unless records are resampled)
            self._epoch_records = epoch_end
        if self._epoch_skipped:
            logging.warning(
                "data: epoch %d skipped %d corrupt records (undecodable image, missing/empty caption, or "
                "one per damaged shard); %d in total",
                self._epoch,
                self._epoch_skipped,
                self._skipped,
            )
        self._epoch += 1
        self._position = 0
        self._epoch_skipped = 0
        self._epoch_batches = 0
        self._iterator = None

    def close(self, log: bool = True) -> None:
        """Release the tf.data iterators; warn with the number of skipped records, if any."""
        self._iterator = None
        self._ahead = None
        if log and self._skipped:
            logging.warning("data: skipped %d corrupt records in total", self._skipped)

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_train_iterator(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    image_size: int,
    context_length: int = 77,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> TrainIterator:
    """The training iterator for a data config (fields: `image_text.DATA_CONFIG_DEFAULTS`).

    Each process yields global_batch_size // process_count examples per batch from its own share of the
    data. Captions are tokenized with `tokenizer`, the model's (`clip_jax.inputs.train_inputs`; None:
    CLIP's BPE), inside tf.data. Unknown config fields or sources raise ValueError.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    resolved = image_text.data_config(config)
    source = image_text.make_source(resolved, seed, process_index, process_count)
    fingerprint = {
        "seed": seed,
        "global_batch_size": global_batch_size,
        "process_index": process_index,
        "process_count": process_count,
        "source": resolved["source"],
        "shuffle_buffer": resolved["shuffle_buffer"],
    }
    return TrainIterator(
        source,
        resolved,
        local_batch_size=global_batch_size // process_count,
        image_size=image_size,
        context_length=context_length,
        seed=seed,
        fingerprint=fingerprint,
        tokenizer=tokenizer,
    )
