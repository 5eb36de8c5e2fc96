"""Split an evaluation set across hosts and pad it so every example is counted exactly once.

Host i of P takes the contiguous examples [i*N//P, (i+1)*N//P). Every host yields the same number of
batches, ceil(ceil(N/P) / local_batch_size), so that collective evaluation steps stay in lockstep; the
missing rows are padding with mask False and index -1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class HostShard:
    """This host's slice [start, stop) of N examples and the batch count every host shares."""

    num_examples: int
    start: int
    stop: int
    local_batch_size: int
    num_batches: int

    @property
    def num_padding(self) -> int:
        return self.num_batches * self.local_batch_size - (self.stop - self.start)


def host_shard(num_examples: int, batch_size: int, process_index: int, process_count: int) -> HostShard:
    """The slice and batch count of `process_index` for a global `batch_size` split over the hosts."""
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    local = batch_size // process_count
    start = num_examples * process_index // process_count
    stop = num_examples * (process_index + 1) // process_count
    num_batches = math.ceil(math.ceil(num_examples / process_count) / local)
    return HostShard(num_examples, start, stop, local, num_batches)


def count_examples(ds: tf.data.Dataset) -> int:
    """Cardinality when tf.data knows it (TFDS datasets do); otherwise one counting pass."""
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def pad_and_batch(ds: tf.data.Dataset, shard: HostShard, pad_example: dict[str, Any]) -> tf.data.Dataset:
    """Add "mask" (True) and "index" (position in the whole split) to this host's examples, append
    `pad_example` rows (mask False, index -1) and batch. `ds` must hold exactly this host's examples."""
    start = shard.start

    def mark(i, example):
        return {**example, "index": tf.cast(i + start, tf.int32), "mask": tf.constant(True)}

    ds = ds.enumerate().map(
        tf.autograph.experimental.do_not_convert(mark),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    pad = {**pad_example, "index": tf.constant(-1, tf.int32), "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(shard.num_padding))
    return ds.batch(shard.local_batch_size, drop_remainder=True)


class PaddedDataset:
    """A re-iterable evaluation input: iterating builds the tf.data pipeline afresh and yields numpy dicts."""

    def __init__(self, build: Callable[[], tf.data.Dataset], shard: HostShard, **info: Any) -> None:
        self._build = build
        self.shard = shard
        self.num_examples = shard.num_examples
        self.num_batches = shard.num_batches
        self.local_batch_size = shard.local_batch_size
        for key, value in info.items():
            setattr(self, key, value)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._build().as_numpy_iterator()

    def as_tf_dataset(self) -> tf.data.Dataset:
        return self._build()
