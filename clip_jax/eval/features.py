"""Batched, jitted feature extraction for evaluation, split over the mesh's batch axes when there are
several devices.

Evaluation data is an iterable of dict batches of numpy arrays: {"image": float32 [b, S, S, 3] normalised,
"label": int [b], "mask": [b] (0 for padding rows)} (what `clip_jax.data.make_eval_dataset` yields). Under
several processes each process feeds its own shard, batches must have the same size on every process, and
results are gathered so that every process sees all real examples once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models.clip import CLIP, l2_normalize

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


def _image_features(p: Any, images: jax.Array, *, model: CLIP, normalize: bool) -> jax.Array:
    f = model.apply({"params": p}, images, method=CLIP.encode_image)
    return l2_normalize(f) if normalize else f.astype(jnp.float32)


def _text_features(p: Any, tokens: jax.Array, *, model: CLIP, normalize: bool) -> jax.Array:
    f = model.apply({"params": p}, tokens, method=CLIP.encode_text)
    return l2_normalize(f) if normalize else f.astype(jnp.float32)


def image_encoder(
    model: CLIP, params: Any, *, normalize: bool = True, mesh: jax.sharding.Mesh | None = None
) -> Encoder:
    """images [b, S, S, 3] -> float32 image features [b, D] (L2-normalised unless normalize=False)."""
    return Encoder(_image_features, params, mesh, model=model, normalize=normalize)


def text_encoder(
    model: CLIP, params: Any, *, normalize: bool = True, mesh: jax.sharding.Mesh | None = None
) -> Encoder:
    """tokens int [b, L] -> float32 text features [b, D] (L2-normalised unless normalize=False)."""
    return Encoder(_text_features, params, mesh, model=model, normalize=normalize)


def encode_in_batches(
    encoder: Encoder, x: np.ndarray, batch_size: int, progress: str | None = None
) -> np.ndarray:
    """Encode a large array in fixed-size chunks (the last one padded, so there is one compilation)."""
    starts: Iterable[int] = range(0, x.shape[0], batch_size)
    if progress is not None and jax.process_index() == 0:
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    outs = []
    for s in starts:
        chunk = x[s : s + batch_size]
        outs.append(encoder(pad_rows(chunk, batch_size))[: chunk.shape[0]])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def check_finite(features: np.ndarray, side: str, where: str) -> None:
    """Raise ValueError naming the side ("image" or "text") and the count if any feature row has NaN or inf.

    Non-finite features have no similarity order: unchecked, they would be scored as ties or at random.
    """
    x = np.asarray(features)
    if x.size == 0:
        return
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{where}: {int(bad.sum())} of {bad.size} {side} feature rows are non-finite (NaN or inf); "
            f"the {side} tower's outputs cannot be ranked (are the weights or the inputs broken?)"
        )


def trim_tokens(tokens: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Drop the padding columns after the last end-of-text token (rounded up to `multiple` columns).

    The text tower is causal and pools at the EOT token (the largest id), so columns after every row's EOT
    cannot change the features; prompts are far shorter than the 77-token context, so this saves most of
    the text tower's work. The rounding keeps the number of distinct shapes (compilations) small.
    """
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return tokens
    used = int(tokens.argmax(axis=-1).max()) + 1
    return tokens[..., : min(tokens.shape[-1], -(-used // multiple) * multiple)]


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
    if progress is not None and jax.process_index() == 0:
        from tqdm import tqdm

        it = tqdm(it, desc=progress, unit="batch", leave=False)
    for i, batch in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


def batch_mask(batch: Batch) -> np.ndarray:
    n = np.asarray(batch["image"]).shape[0]
    return np.asarray(batch["mask"]).astype(bool) if "mask" in batch else np.ones(n, bool)


def extract_image_features(
    model: CLIP,
    params: Any,
    dataset: Iterable[Batch],
    *,
    normalize: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All (unmasked) image features and labels of a dataset: (float32 [N, D], int32 [N]).

    Every process returns the features of all processes' examples.
    """
    mesh = default_mesh() if mesh is None else mesh
    encoder = image_encoder(model, params, normalize=normalize, mesh=mesh)
    feats, labels = [], []
    for batch in iterate_batches(dataset, max_batches, progress):
        # Gather before dropping padding: every process contributes the same number of rows.
        keep = gather_processes(batch_mask(batch))
        f = gather_processes(encoder(np.asarray(batch["image"], np.float32)))
        y = gather_processes(np.asarray(batch["label"], np.int32))
        feats.append(f[keep])
        labels.append(y[keep])
    if not feats:
        raise ValueError("the dataset yielded no batches")
    return np.concatenate(feats), np.concatenate(labels)


def cached_features(
    path: str | os.PathLike | None, compute: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Load (features, labels) from an .npz cache, or compute and save them (process 0 writes)."""
    if path is not None and os.path.exists(path):
        with np.load(path) as z:
            return z["features"], z["labels"]
    feats, labels = compute()
    if path is not None and jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, features=feats, labels=labels)
        os.replace(tmp, path)
    return feats, labels


def params_fingerprint(params: Any, subtree: str | None = None) -> str:
    """A short content hash of a params tree (or one subtree such as 'text'), for cache keys."""
    tree = params[subtree] if subtree is not None else params
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in sorted(
        jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: jax.tree_util.keystr(kv[0])
    ):
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((a.shape, a.dtype)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
