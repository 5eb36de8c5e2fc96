"""The evaluation runtime: jitted functions over a data-parallel mesh, batches split over devices and
processes, and gathered back.

Evaluation data is an iterable of dict batches of numpy arrays: {"image": float32 [b, S, S, 3] normalised,
"label": int [b], "mask": [b] (0 for padding rows)} (what `clip_jax.eval.datasets.eval_dataset` yields).
Under several processes each process feeds its own shard, batches must have the same size on every
process, and results are gathered so that every process sees all real examples once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

Batch = Mapping[str, Any]


def default_mesh() -> jax.sharding.Mesh | None:
    """A data-parallel mesh over all devices, or None on a single device (no sharding needed)."""
    if jax.device_count() == 1:
        return None
    from clip_jax.sharding import make_mesh

    return make_mesh(data=-1)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    extra = (-x.shape[0]) % multiple
    if not extra:
        return x
    return np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])


@functools.cache
def _jitted(fn: Callable[..., jax.Array], mesh: jax.sharding.Mesh | None, static: tuple) -> Callable:
    """One jitted function per (function, mesh, static arguments such as the model), so that building a
    new Encoder for the same model (e.g. one classifier per dataset) does not compile again."""
    f = functools.partial(fn, **dict(static))
    if mesh is None:
        return jax.jit(f)
    from clip_jax.sharding import batch_sharding

    return jax.jit(f, out_shardings=batch_sharding(mesh))


class Encoder:
    """Runs `fn(params, batch array, *extras, **static)`, jitted, with the batch split over devices.

    `fn` is a module-level function and `static` its hashable keyword arguments (the model, flags). The
    batch is padded to a multiple of the local device count, placed on the mesh, and the result gathered
    to the host with the padding rows dropped again.
    """

    def __init__(
        self, fn: Callable[..., jax.Array], params: Any, mesh: jax.sharding.Mesh | None = None, **static: Any
    ) -> None:
        self.mesh = mesh
        self._fn = _jitted(fn, mesh, tuple(sorted(static.items())))
        if mesh is None:
            self.params = params
            return
        from clip_jax.sharding import batch_sharding, replicated

        self._batch_sharding = batch_sharding(mesh)
        self._replicated = replicated(mesh)
        # Params that are already sharded (e.g. the trainer's) stay where they are; host arrays are replicated.
        self.params = jax.tree.map(
            lambda a: (
                a
                if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1
                else jax.device_put(a, self._replicated)
            ),
            params,
        )

    def __call__(self, x: np.ndarray, *extras: Any) -> np.ndarray:
        n = x.shape[0]
        if self.mesh is None:
            return np.asarray(self._fn(self.params, x, *extras))
        x = pad_rows(np.asarray(x), jax.local_device_count())
        if jax.process_count() == 1:
            xs = jax.device_put(x, self._batch_sharding)
        else:
            xs = jax.make_array_from_process_local_data(self._batch_sharding, x)
        extras = tuple(jax.device_put(e, self._replicated) for e in extras)
        out = self._fn(self.params, xs, *extras)
        if jax.process_count() == 1:
            return np.asarray(out)[:n]
        from jax.experimental import multihost_utils

        # Each process gets its own rows back (the other processes' rows are gathered by the caller).
        local = multihost_utils.global_array_to_host_local_array(out, self.mesh, self._batch_sharding.spec)
        return np.asarray(local)[:n]


def gather_processes(x: np.ndarray) -> np.ndarray:
    """Concatenate a per-process array over processes (identity with one process)."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    g = multihost_utils.process_allgather(x, tiled=False)
    return np.asarray(g).reshape((-1,) + x.shape[1:])


def iterate_batches(
    dataset: Iterable[Batch], max_batches: int | None = None, progress: str | None = None
) -> Iterator[Batch]:
    """The dataset's batches, optionally capped and wrapped in a tqdm progress bar named `progress`."""
    it: Iterable[Batch] = dataset
    # Bars only on a terminal: in a log file their carriage-return refreshes pile up.
    if progress is not None and jax.process_index() == 0 and sys.stderr.isatty():
        from tqdm import tqdm

        it = tqdm(it, desc=progress, unit="batch", leave=False)
    for i, batch in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


def batch_mask(batch: Batch) -> np.ndarray:
    n = np.asarray(batch["image"]).shape[0]
    return np.asarray(batch["mask"]).astype(bool) if "mask" in batch else np.ones(n, bool)
