"""A background thread that keeps the next batches of a resumable input iterator ready on the devices.

The trainer's input (`clip_jax.data.TrainIterator`) builds a tf.data pipeline for every epoch (~0.25 s of
Python on the main job's CPU, ahead of the boundary), and each batch must be copied onto the mesh; done in
the step loop, both would stall it. Here a
thread pulls batches `size` ahead, places them with `place` (e.g. `jax.make_array_from_process_local_data`,
as big_vision's device prefetch does) and queues them with the iterator's state *after* each batch, so
`get_state()` always describes the batches handed out, never the prefetched ones: a checkpoint taken
between steps resumes exactly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_DONE = object()


class Prefetcher(Iterator[Any]):
    """`place(batch)` for each batch of `source`, `size` batches ahead, in a daemon thread.

    `source` needs `get_state()`; its `num_skipped` (if any) is snapshotted with each batch too. Errors
    of the source or of `place` are raised by the `__next__` that reaches them, in order.
    """

    def __init__(self, source: Any, place: Callable[[Any], Any] = lambda b: b, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._source, self._place = source, place
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._state = source.get_state()
        self._skipped = getattr(source, "num_skipped", None)
        self._thread = threading.Thread(target=self._fill, name="clip_jax-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._place(next(self._source))
                item = (batch, self._source.get_state(), getattr(self._source, "num_skipped", None))
                self._put(item)
        except StopIteration:
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)

    def _put(self, item: Any) -> None:
        """Queue `item`, giving up once close() is called (nobody will take it then)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        item = self._next_item()
        if item is _DONE:
            self._queue.put(_DONE)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._state, self._skipped = item
        return batch

    def _next_item(self) -> Any:
        # Never wait on a thread that has ended without a last word (killed by the interpreter's
        # shutdown, or an error while queueing its error): the run must end, not hang.
        while True:
            try:
                return self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without a batch or an error") from None

    def get_state(self) -> Any:
        """The source's state after the last batch handed out (its initial state before the first)."""
        return self._state

    @property
    def num_skipped(self) -> int | None:
        return self._skipped

    def close(self) -> None:
        """Stop the thread (the prefetched batches are dropped; the state stays that of the last one
        handed out)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
