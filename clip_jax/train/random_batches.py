"""Deterministic random image-text batches, for tests and benchmarks that need no input pipeline.

Batch `i` is a pure function of (seed, i), so the iterator's position is a single integer and every
process can build exactly its own rows of the global batch. With `distinct_batches=n` the stream cycles
through n batches (`config.data.distinct_batches`): with n = 1 a run fits one batch, the classic check
that a model and optimizer can learn at all.
"""

from __future__ import annotations

import numpy as np


class RandomBatches:
    # Made in no time, in the step loop: no prefetch thread (tests also hook __next__ at exact steps).
    prefetch = False

    def __init__(
        self,
        *,
        global_batch_size: int,
        image_size: int,
        context_length: int,
        seed: int = 0,
        vocab_size: int = 49408,
        process_index: int = 0,
        process_count: int = 1,
        distinct_batches: int = 0,
    ):
        if distinct_batches < 0:
            raise ValueError(
                f"config.data.distinct_batches must be >= 0 (0: endless), got {distinct_batches}"
            )
        if global_batch_size % process_count:
            raise ValueError(
                f"config.batch_size={global_batch_size} is not divisible by the {process_count} processes"
            )
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.image_size = image_size
        self.context_length = context_length
        self.seed = seed
        self.vocab_size = vocab_size
        self.process_index = process_index
        self.distinct_batches = distinct_batches
        self.position = 0

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        index = self.position % self.distinct_batches if self.distinct_batches else self.position
        rng = np.random.default_rng([self.seed, index])
        self.position += 1
        b, s, length = self.global_batch_size, self.image_size, self.context_length
        images = rng.standard_normal((b, s, s, 3), dtype=np.float32)
        # SOT, random word tokens, EOT, padding: the shape real tokenized captions have.
        lengths = rng.integers(1, length - 1, size=b)
        text = rng.integers(1, 49406 if self.vocab_size > 49407 else self.vocab_size - 1, size=(b, length))
        text[:, 0] = 49406 % self.vocab_size
        cols = np.arange(length)[None]
        text = np.where(cols <= lengths[:, None], text, 0)
        text[np.arange(b), lengths] = min(49407, self.vocab_size - 1)
        lo = self.process_index * self.local_batch_size
        sl = slice(lo, lo + self.local_batch_size)
        return {"image": images[sl], "text": text[sl].astype(np.int32)}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
