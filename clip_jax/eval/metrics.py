"""Classification and retrieval metrics, computed on the host from logits or similarity scores.

Classification is streamed: `ClassificationMeter.update` takes one batch of logits at a time, ignores
padding rows (mask 0) so that each real example is counted exactly once, and `result()` gives top-1, top-5
and mean per-class recall (the average over classes present in the labels, as sklearn's
`balanced_accuracy_score`, which CLIP_benchmark reports).

Ties never count for the model. A wrong class whose logit equals the true class's, or a negative candidate
whose score equals the best positive's, ranks above it. Constant (or collapsed) features therefore score 0
at every k that does not reach past all the negatives (k < N for N candidates with one positive), not the
k/N that a random tie-break gives on average; the rule is pessimistic on purpose, so that features that
cannot tell candidates apart earn nothing, and the numbers depend on neither the order of the candidates nor
a sort's tie handling. CLIP_benchmark ranks with `torch.topk`, whose order among equal scores is
unspecified (in torch 2.x on CPU it changes with the row length), so it
credits a tie to whichever index topk returns; the two agree whenever there are no exact ties, which real
features give only for duplicates (the same caption or image twice). NaN scores have no rank: a ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def true_class_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of the true class in each row: the number of other classes whose logit is >= it.

    A class tying the true class counts as ranked above it, so top-k accuracy is `rank < k` and ties never
    count for the model. Raises ValueError on NaN logits (they have no order).
    """
    logits = np.asarray(logits)
    _check_no_nan(logits, "logits")
    true = np.take_along_axis(logits, labels[:, None], axis=1)
    return (logits >= true).sum(axis=1) - 1


def _check_no_nan(x: np.ndarray, what: str) -> None:
    bad = np.isnan(x).any(axis=-1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {bad.size} rows of {what} contain NaN, which has no rank")


class ClassificationMeter:
    """Accumulates top-k hits and per-class counts over batches.

    The true class is in the top k when fewer than k other classes have a logit >= its logit: a tie counts
    against the model (`true_class_ranks`), for top-k accuracy and mean per-class recall alike. With fewer
    than k classes every example is a top-k hit (CLIP_benchmark reports NaN for top-5 there).
    """

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5)) -> None:
        self.num_classes = num_classes
        self.ks = tuple(ks)
        self.hits = dict.fromkeys(self.ks, 0)
        self.count = 0
        self.class_total = np.zeros(num_classes, np.int64)
        self.class_hits = np.zeros(num_classes, np.int64)

    def update(self, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> None:
        logits = np.asarray(logits, np.float32)
        labels = np.asarray(labels).astype(np.int64)
        if mask is not None:
            keep = np.asarray(mask).astype(bool)
            logits, labels = logits[keep], labels[keep]
        if labels.size == 0:
            return
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]"
            )
        rank = true_class_ranks(logits, labels)
        for k in self.ks:
            self.hits[k] += int((rank < k).sum())
        self.count += labels.size
        np.add.at(self.class_total, labels, 1)
        np.add.at(self.class_hits, labels, (rank == 0).astype(np.int64))

    def merge(self, other: ClassificationMeter) -> None:
        """Add another meter's counts (e.g. from another process)."""
        for k in self.ks:
            self.hits[k] += other.hits[k]
        self.count += other.count
        self.class_total += other.class_total
        self.class_hits += other.class_hits

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no (unmasked) examples were seen")
        out = {f"acc{k}": self.hits[k] / self.count for k in self.ks}
        present = self.class_total > 0
        out["mean_per_class_recall"] = float(np.mean(self.class_hits[present] / self.class_total[present]))
        out["num_examples"] = int(self.count)
        return out


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """One-shot version of `ClassificationMeter` for logits that fit in memory."""
    meter = ClassificationMeter(np.asarray(logits).shape[-1], ks)
    meter.update(logits, labels, mask)
    return meter.result()


def collapse_logits(logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Scores of target classes that are sets of head classes: out[:, j] = max_{i in group j} logits[:, i].

    `groups` is int [T, G], each row padded by repeating one of its members. This maps a 1000-way ImageNet
    head onto ImageNet-R/-A's 200 classes (groups of one) or ObjectNet's 113 classes (groups of 1-5).
    """
    return np.asarray(logits)[:, groups].max(axis=-1)


def pad_groups(groups: Sequence[Sequence[int]]) -> np.ndarray:
    """[[a], [b, c]] -> [[a, a], [b, c]]: equal-length rows for `collapse_logits`."""
    width = max(len(g) for g in groups)
    return np.array([list(g) + [g[0]] * (width - len(g)) for g in groups], np.int64)


def retrieval_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of the best-scoring positive for each query.

    scores: [Q, N] similarities; positives: bool [Q, N]. The rank counts the negative candidates that score
    at least as high as the best positive (a tie ranks above it), so recall@k is `rank < k`. Ties between
    positives do not matter: any positive in the top k is a hit. Raises ValueError on NaN scores.
    """
    scores = np.asarray(scores, np.float32)
    positives = np.asarray(positives, bool)
    _check_no_nan(scores, "retrieval scores")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive candidate")
    best_pos = np.where(positives, scores, -np.inf).max(axis=1)
    return ((scores >= best_pos[:, None]) & ~positives).sum(axis=1)


def retrieval_metrics(
    image_features: np.ndarray,
    text_features: np.ndarray,
    text_to_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k in both directions with several captions per image (CLIP_benchmark's metric names).

    image_retrieval_recall@k: for each caption, is its image among the k most similar images.
    text_retrieval_recall@k:  for each image, is any of its captions among the k most similar captions.
    Features are expected L2-normalised; `text_to_image[j]` is the image index of caption j. A candidate that
    ties the best positive ranks above it (`retrieval_ranks`): constant features give 0 for k < N.
    """
    img = np.asarray(image_features, np.float32)
    txt = np.asarray(text_features, np.float32)
    t2i = np.asarray(text_to_image, np.int64)
    num_images = img.shape[0]
    image_ranks, text_ranks = [], []
    for s in range(0, txt.shape[0], chunk):
        scores = txt[s : s + chunk] @ img.T
        pos = t2i[s : s + chunk, None] == np.arange(num_images)[None, :]
        image_ranks.append(retrieval_ranks(scores, pos))
    for s in range(0, num_images, chunk):
        scores = img[s : s + chunk] @ txt.T
        pos = np.arange(s, min(s + chunk, num_images))[:, None] == t2i[None, :]
        text_ranks.append(retrieval_ranks(scores, pos))
    image_ranks, text_ranks = np.concatenate(image_ranks), np.concatenate(text_ranks)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(np.mean(image_ranks < k))
        out[f"text_retrieval_recall@{k}"] = float(np.mean(text_ranks < k))
    return out
