"""Ranking rules of the eval metrics: ties count against the model, NaN/inf features are refused.

Hand-made scores with exact ties (equal float32 dot products), their numbers worked out by hand, and the
same examples scored the way LAION's CLIP_benchmark 1.6.2 scores them (torch.topk), to show where and
why the two differ.
"""

from __future__ import annotations

import numpy as np
import pytest

from clip_jax.eval import classifier as zsc
from clip_jax.eval import retrieval, zeroshot
from clip_jax.eval.metrics import classification_metrics, retrieval_metrics, retrieval_ranks

E = np.eye(4, dtype=np.float32)
R2 = np.float32(1 / np.sqrt(2))


def test_retrieval_ties_rank_above_the_positive():
    # Images e0, e1, e2 with one caption each; caption 0 lies halfway between images 0 and 1, so it scores
    # 1/sqrt(2) with both (bit-identical): image 1 (a negative) ties image 0 (its positive) and ranks above.
    img = E[:3, :3]
    txt = np.stack([R2 * (E[0, :3] + E[1, :3]), E[1, :3], E[2, :3]])
    m = retrieval_metrics(img, txt, np.array([0, 1, 2]), ks=(1, 2))
    # caption->image: caption 0 at rank 1 (miss at 1, hit at 2), captions 1 and 2 at rank 0.
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3) and m["image_retrieval_recall@2"] == 1.0
    # image->caption: image 0 scores [1/sqrt2, 0, 0] (its caption first); image 1 scores [1/sqrt2, 1, 0].
    assert m["text_retrieval_recall@1"] == 1.0
    # Positives tying each other do not matter: image 0 with two equal captions, no negative as high.
    assert retrieval_ranks(np.array([[1.0, 1.0, 0.0]]), np.array([[True, True, False]])).tolist() == [0]
    # A duplicate caption (same features) of images 0 and 1 scores the same against image 1: for image 1
    # its own copy ties image 0's copy, a negative, so image 1 misses at k=1 (image 0 keeps its exact match).
    u = np.array([0.6, 0.8], np.float32)
    m = retrieval_metrics(E[:2, :2], np.stack([E[0, :2], u, u]), np.array([0, 0, 1]), ks=(1, 2))
    assert m["text_retrieval_recall@1"] == 0.5 and m["text_retrieval_recall@2"] == 1.0


def test_constant_features_score_zero_until_k_passes_every_negative():
    # N = 4 images, one caption each, all features equal: every score ties, each query has 3 negatives at
    # its positive's score, so its rank is 3: recall@k = 0 for k < 4 and 1 at k = 4 (a random tie-break
    # would average k/4; the pessimistic rule gives nothing to features that cannot tell images apart).
    feats = np.full((4, 8), 1 / np.sqrt(8), np.float32)
    m = retrieval_metrics(feats, feats, np.arange(4), ks=(1, 3, 4))
    for d in ("image", "text"):
        assert [m[f"{d}_retrieval_recall@{k}"] for k in (1, 3, 4)] == [0.0, 0.0, 1.0]
    # Two captions per image: 3 * 2 = 6 negatives tie each image's captions, so text recall@k = 0 up to 6.
    m = retrieval_metrics(feats, np.repeat(feats, 2, 0), np.repeat(np.arange(4), 2), ks=(6, 7))
    assert (m["text_retrieval_recall@6"], m["text_retrieval_recall@7"]) == (0.0, 1.0)
    assert (m["image_retrieval_recall@6"], m["image_retrieval_recall@7"]) == (1.0, 1.0)


def test_classification_ties_rank_above_the_true_class():
    logits = np.array([[2, 2, 0], [2, 2, 0], [0, 5, 1]], np.float32)
    labels = np.array([0, 1, 1])
    m = classification_metrics(logits, labels, ks=(1, 2))
    # Rows 0 and 1: the true class ties a wrong one at the top, rank 1. Row 2: right.
    assert m["acc1"] == pytest.approx(1 / 3) and m["acc2"] == 1.0
    # Per class (top-1, same rule): class 0 recalled 0 of 1, class 1 1 of 2: (0 + 1/2) / 2.
    assert m["mean_per_class_recall"] == pytest.approx(0.25)
    # Constant logits over 4 classes: rank 3 for every example.
    m = classification_metrics(np.zeros((4, 4), np.float32), np.arange(4), ks=(1, 3, 4))
    assert (m["acc1"], m["acc3"], m["acc4"], m["mean_per_class_recall"]) == (0.0, 0.0, 1.0, 0.0)
    # -inf is an ordinary (lowest) value; NaN has no rank.
    assert classification_metrics(np.array([[0.0, -np.inf]]), np.array([0]), ks=(1,))["acc1"] == 1.0
    with pytest.raises(ValueError, match="1 of 2 rows of logits contain NaN"):
        classification_metrics(np.array([[0.0, 1.0], [np.nan, 0.0]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(np.array([[np.nan, 0.0]]), np.array([[True, False]]))


# --- CLIP_benchmark (https://github.com/LAION-AI/CLIP_benchmark, version 1.6.2), transcribed ---------------


def _cb_recall(torch, scores, positive_pairs, k):
    """clip_benchmark/metrics/zeroshot_retrieval.py: recall_at_k, then `> 0` and the mean, as `evaluate`."""
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=scores.shape[1])
    nb_true_positive = (topk_onehot * positive_pairs.view(scores.shape[0], 1, -1)).sum(dim=(1, 2))
    return ((nb_true_positive / nb_positive) > 0).float().mean().item()


def _cb_classification(torch, logits, target):
    """clip_benchmark/metrics/zeroshot_classification.py: `accuracy` (torch.topk) and argmax + sklearn."""
    from sklearn.metrics import balanced_accuracy_score

    pred = logits.topk(1, 1, True, True)[1].t()
    acc1 = pred.eq(target.view(1, -1).expand_as(pred))[:1].reshape(-1).float().sum().item() / len(target)
    return acc1, balanced_accuracy_score(target.numpy(), logits.argmax(axis=1).numpy())


def test_clip_benchmark_breaks_ties_by_topk_order_where_ties_count_against_the_model_here():
    """Same scores, CLIP_benchmark's numbers and ours; they differ only on exact ties.

    CLIP_benchmark ranks with torch.topk, which returns *some* k of the tied indices (its order among
    equal values is unspecified, and on CPU depends on the row length), so it credits a tie to whichever
    candidate topk happens to return, and its mean per-class recall takes argmax, the first maximal index.
    The examples below are chosen so that its numbers do not depend on which tied index topk returns.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    # Constant features, 4 images with one caption each. torch.topk returns the same k indices for each
    # (identical) row, and each index is the positive of exactly one caption: CLIP_benchmark gives k/4.
    feats = np.full((4, 8), 1 / np.sqrt(8), np.float32)
    scores = torch.from_numpy(feats @ feats.T)
    pos = torch.eye(4, dtype=torch.bool)
    ours = retrieval_metrics(feats, feats, np.arange(4), ks=(1, 2, 3, 4))
    for k in (1, 2, 3, 4):
        assert _cb_recall(torch, scores, pos, k) == k / 4
        assert ours[f"image_retrieval_recall@{k}"] == (1.0 if k == 4 else 0.0)
    # NaN features: torch.topk orders NaN above every number, so all-NaN scores are one big tie too and
    # CLIP_benchmark reports 1/4 at k=1; here NaN has no rank (and the eval entry points refuse NaN features).
    nan_scores = torch.full((4, 4), float("nan"))
    assert _cb_recall(torch, nan_scores, pos, 1) == 0.25
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(nan_scores.numpy(), pos.numpy())
    # Classification: two identical rows whose true classes (0 and 1) tie at the top. topk returns one of
    # the two tied classes for both rows, the label of exactly one: acc1 1/2. argmax returns class 0 for
    # both: class 0 recalled, class 1 not, mean per-class recall 1/2. Ours: 0 for both.
    logits, labels = np.array([[2, 2, 0], [2, 2, 0]], np.float32), np.array([0, 1])
    assert _cb_classification(torch, torch.from_numpy(logits), torch.from_numpy(labels)) == (0.5, 0.5)
    m = classification_metrics(logits, labels, ks=(1,))
    assert (m["acc1"], m["mean_per_class_recall"]) == (0.0, 0.0)
    # Without ties the two agree exactly.
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 8)).astype(np.float32)
    t2i = rng.permutation(np.repeat(np.arange(30), 3))
    txt = (img[t2i] + rng.normal(size=(90, 8))).astype(np.float32)
    s = torch.from_numpy(txt @ img.T)
    pos = torch.from_numpy(t2i[:, None] == np.arange(30)[None, :])
    ours = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10))
    # CLIP_benchmark averages the 0/1 hits in float32: one rounding of a value <= 1, below 6e-8.
    for k in (1, 5, 10):
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(_cb_recall(torch, s, pos, k), abs=1e-7)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(_cb_recall(torch, s.T, pos.T, k), abs=1e-7)
    logits, labels = rng.normal(size=(200, 10)).astype(np.float32), rng.integers(0, 10, 200)
    acc1, mpcr = _cb_classification(torch, torch.from_numpy(logits), torch.from_numpy(labels))
    m = classification_metrics(logits, labels)
    # acc1 is the same count over the same n; the per-class mean may differ in its last bits (order of sums).
    assert m["acc1"] == acc1 and m["mean_per_class_recall"] == pytest.approx(mpcr, rel=1e-12)
    assert 0.05 < acc1 < 0.2  # chance is 1/10: the example has no ties but is not trivial


# --- NaN / inf features at the entry points -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from clip_jax.models import CLIP, get_model_config, random_params

    model = CLIP(get_model_config("tiny"))
    return model, random_params(model, seed=0)


def _images(n: int, bad_rows: tuple[int, ...] = (), value: float = np.nan) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(n, 32, 32, 3)).astype(np.float32)
    x[list(bad_rows)] = value
    return x


def _with_nan_text_projection(params):
    text = dict(params["text"], text_projection=np.full_like(params["text"]["text_projection"], np.nan))
    return dict(params, text=text)


def test_retrieval_refuses_non_finite_features_naming_the_side(tiny):
    model, params = tiny
    captions = [["a red square"], ["a blue circle", "a circle"], ["a dog"], ["a cat"]]
    batch = {"image": _images(4, (1, 3), np.inf), "captions": captions}
    with pytest.raises(ValueError, match="retrieval: 2 of 4 image feature rows are non-finite"):
        retrieval.retrieval_eval(model, params, [batch])
    batch = {"image": _images(4), "captions": captions}
    with pytest.raises(ValueError, match="retrieval: 5 of 5 text feature rows are non-finite"):
        retrieval.retrieval_eval(model, _with_nan_text_projection(params), [batch])
    assert retrieval.retrieval_eval(model, params, [batch])["num_captions"] == 5


def test_zeroshot_refuses_non_finite_features_naming_the_side(tiny):
    model, params = tiny
    names, templates = ["red square", "blue circle", "dog"], ["a photo of a {}.", "{}"]
    clf = zsc.build_zeroshot_classifier(model, params, names, templates)
    labels, mask = np.array([0, 1, 2, 0, 1, 2]), np.array([1, 1, 1, 1, 0, 0])
    batch = {"image": _images(6, (0, 2)), "label": labels, "mask": mask}
    with pytest.raises(ValueError, match="zero-shot logits of batch 0: 2 of 4 image feature rows"):
        zeroshot.zeroshot_eval(model, params, [batch], classifier=clf)
    # NaN only in padding rows (mask 0): not counted, not refused.
    batch = {"image": _images(6, (4, 5)), "label": labels, "mask": mask}
    assert zeroshot.zeroshot_eval(model, params, [batch], classifier=clf)["num_examples"] == 4
    bad = clf.copy()
    bad[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"classifier \(one row per class\): 1 of 3 text feature rows"):
        zeroshot.zeroshot_eval(model, params, [batch], classifier=bad)
    with pytest.raises(ValueError, match="classifier prompts: 6 of 6 text feature rows"):
        zeroshot.zeroshot_eval(model, _with_nan_text_projection(params), [batch], names, templates)
