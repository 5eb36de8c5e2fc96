"""The zero-shot classifier: class embeddings from class names and prompt templates, the heads that map its
outputs onto a dataset's labels, and top-k scoring of a stream of image batches against it.

The classifier follows CLIP: for each class, every template is filled in, embedded and L2-normalised; the
embeddings are averaged and the mean renormalised. Its weights depend only on the text tower, the class names
and the templates, so they are cached on disk under a hash of the three. Zero-shot classification and the
robustness evaluation are both built on this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.eval import features as F
from clip_jax.eval import metadata
from clip_jax.eval.cache import params_fingerprint
from clip_jax.eval.metrics import ClassificationMeter, collapse_logits, pad_groups
from clip_jax.eval.runtime import Batch, Encoder, batch_mask, gather_processes, iterate_batches
from clip_jax.inputs import ModelInputs
from clip_jax.models.clip import CLIP, l2_normalize

Tokenizer = Callable[[Sequence[str]], np.ndarray]


def classifier_cache_key(checkpoint_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Hash of (checkpoint, class names, templates): the inputs that determine the classifier."""
    blob = json.dumps([checkpoint_id, list(classnames), list(templates)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def build_zeroshot_classifier(
    model: CLIP,
    params: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    tokenizer: Tokenizer | None = None,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_id: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Zero-shot classifier weights float32 [D, C] (columns are unit class embeddings, as open_clip's).

    With `cache_dir`, the weights are stored as `<cache_dir>/zeroshot_<hash>.npy`; `checkpoint_id` names the
    weights (e.g. a file path and its modification time); without it the text tower's contents are hashed.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    cache_path = None
    if cache_dir is not None:
        ckpt = checkpoint_id if checkpoint_id is not None else params_fingerprint(params, "text")
        cache_path = os.path.join(
            cache_dir, f"zeroshot_{classifier_cache_key(ckpt, classnames, templates)}.npy"
        )
        if os.path.exists(cache_path):
            return np.load(cache_path)
    # Without one, CLIP's BPE (a SigLIP text tower raises: its vocabulary is in its checkpoint).
    tokenizer = tokenizer or ModelInputs().text_tokenizer(model.cfg)
    texts = [t.format(c) for c in classnames for t in templates]
    tokens = np.asarray(tokenizer(texts), np.int32)
    if model.cfg.text.padding_inert:  # not SigLIP's: it reads every column
        tokens = F.trim_tokens(tokens)
    encoder = F.text_encoder(model, params, normalize=True, mesh=mesh)
    emb = F.encode_in_batches(encoder, tokens, batch_size, "zero-shot classifier" if progress else None)
    F.check_finite(emb, "text", "zero-shot classifier prompts")
    emb = emb.reshape(len(classnames), len(templates), -1)
    weights = np.asarray(l2_normalize(jnp.asarray(emb.mean(axis=1)))).T
    if cache_path is not None and jax.process_index() == 0:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache_path + ".tmp.npy"
        np.save(tmp, weights)
        os.replace(tmp, cache_path)
    return weights


def check_classifier(classifier: np.ndarray) -> None:
    """ValueError naming the text side if any class embedding (column of [D, C]) holds NaN or inf."""
    F.check_finite(np.asarray(classifier).T, "text", "zero-shot classifier (one row per class)")


@dataclasses.dataclass(frozen=True)
class Head:
    """How the classifier's outputs map onto a dataset's labels.

    groups: int [T, G] or None. Target class j scores max over classifier columns groups[j] (collapse_logits).
    label_map: int [num_dataset_labels] or None. Dataset label -> target class, -1 for labels outside the head.
    """

    groups: np.ndarray | None = None
    label_map: np.ndarray | None = None

    @property
    def num_targets(self) -> int | None:
        return None if self.groups is None else int(self.groups.shape[0])


def head_for(name: str | None, num_classes: int = 1000) -> Head:
    """The head of a DatasetSpec.head value: None, 'imagenet_r', 'imagenet_a' or 'objectnet'."""
    if name is None:
        return Head()
    if name in ("imagenet_r", "imagenet_a"):
        idx = metadata.subset_indices(name)
        label_map = np.full(num_classes, -1, np.int64)
        label_map[idx] = np.arange(idx.size)
        return Head(groups=idx[:, None], label_map=label_map)
    if name == "objectnet":
        # ObjectNet batches carry labels in ObjectNet's own 113-class order (see clip_jax.data.objectnet).
        return Head(groups=pad_groups([c["imagenet_indices"] for c in metadata.objectnet_classes()]))
    raise ValueError(f"unknown head {name!r}")


# A fixed scale of 100, whatever the model's own: top-k accuracy depends only on the ranking of cos(image,
# class), which neither a scale nor SigLIP's bias changes; probabilities are `label_probabilities`'.
def _zeroshot_logits(p: Any, images: jax.Array, classifier: jax.Array, *, model: CLIP) -> jax.Array:
    f = l2_normalize(model.apply({"params": p}, images, method=CLIP.encode_image))
    return 100.0 * f @ classifier


def logits_encoder(model: CLIP, params: Any, mesh: jax.sharding.Mesh | None = None) -> Encoder:
    """(images [b,S,S,3], classifier [D,C]) -> logits [b, C] = 100 * normalised image features @ classifier."""
    return Encoder(_zeroshot_logits, params, mesh, model=model)


def evaluate_logits(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    dataset: Iterable[Batch],
    head: Head = Head(),
    *,
    max_batches: int | None = None,
    progress: str | None = None,
) -> dict[str, float]:
    """Stream a dataset through `logits_fn(images) -> logits` and score top-1/top-5/mean per-class recall.

    A class tying the true class's logit ranks above it (`clip_jax.eval.metrics.ClassificationMeter`).
    Non-finite logits of real (unmasked) rows raise a ValueError that blames the image features: callers
    check the classifier (`check_classifier`) first.
    """
    meter: ClassificationMeter | None = None
    dropped = 0
    for i, batch in enumerate(iterate_batches(dataset, max_batches, progress)):
        images = np.asarray(batch["image"], np.float32)
        mask = gather_processes(batch_mask(batch))
        labels = gather_processes(np.asarray(batch["label"], np.int64))
        logits = gather_processes(np.asarray(logits_fn(images)))
        # Unit image features against a finite classifier give logits in [-100, 100]: a non-finite logit
        # means non-finite image features. Stop at the first such batch rather than score the rest.
        F.check_finite(logits[mask], "image", f"zero-shot logits of batch {i}")
        if head.groups is not None:
            logits = collapse_logits(logits, head.groups)
        if head.label_map is not None:
            # Padding rows may carry label -1; they stay -1 (and masked) instead of wrapping around.
            labels = np.where(labels >= 0, head.label_map[np.clip(labels, 0, None)], -1)
            outside = mask & (labels < 0)
            dropped += int(outside.sum())
            mask = mask & ~outside
        if meter is None:
            meter = ClassificationMeter(logits.shape[-1])
        meter.update(logits, labels, mask)
    if meter is None:
        raise ValueError("the dataset yielded no batches")
    out = meter.result()
    if dropped:
        # Only happens when labels fall outside a class subset (e.g. mock data); real data has none.
        out["num_outside_head"] = dropped
    return out
