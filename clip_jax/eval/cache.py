"""On-disk caches of evaluation results that depend only on the weights and the data: extracted features
(.npz) and the content hash that keys them when no file identifies the weights."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


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


def slug(text: str) -> str:
    """A file-name-safe version of text."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:150]
