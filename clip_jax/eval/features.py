"""Image and text features of a CLIP model for evaluation: batched, jitted, split over the mesh's batch
axes (`clip_jax.eval.runtime`), with checks that they can be ranked.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.eval.runtime import (
    Batch,
    Encoder,
    batch_mask,
    default_mesh,
    gather_processes,
    iterate_batches,
    pad_rows,
)
from clip_jax.models.clip import CLIP, l2_normalize


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
    if progress is not None and jax.process_index() == 0 and sys.stderr.isatty():
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
