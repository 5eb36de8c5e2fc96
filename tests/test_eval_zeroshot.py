"""Zero-shot classifier and metrics: parity with open_clip, caching, and metrics that can succeed and fail."""

from __future__ import annotations

import numpy as np
import pytest

from clip_jax.eval import classifier as zsc
from clip_jax.eval import zeroshot
from clip_jax.eval.metrics import ClassificationMeter, classification_metrics
from clip_jax.models import CLIP, get_model_config, random_params

CLASSNAMES = ["red square", "blue circle", "green triangle", "yellow star", "tiny dog", "large cat"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{}", "itap of a {}."]


@pytest.fixture(scope="module")
def tiny():
    model = CLIP(get_model_config("tiny"))
    return model, random_params(model, seed=0)


def test_classifier_matches_open_clip(tmp_path):
    """Same random weights, same tokens: open_clip's build_zero_shot_classifier and ours agree to 1e-5."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from safetensors.torch import save_file

    from clip_jax.weights import load_pretrained

    torch.manual_seed(0)
    cfg = get_model_config("tiny")
    ref = open_clip.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    ).eval()
    # Random init leaves some tensors at trivial values; perturb every one so each mapping is exercised.
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model, params = load_pretrained(cfg, path)

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    want = build_zero_shot_classifier(ref, tokenizer, CLASSNAMES, TEMPLATES, num_classes_per_batch=4).numpy()
    got = zsc.build_zeroshot_classifier(
        model, params, CLASSNAMES, TEMPLATES, tokenizer=lambda t: tokenizer(list(t)).numpy(), batch_size=7
    )
    assert got.shape == want.shape == (cfg.embed_dim, len(CLASSNAMES))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # And with our own tokenizer (the default), which must produce the same tokens.
    np.testing.assert_allclose(
        zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES), want, atol=1e-5
    )


def test_classifier_is_cached_per_checkpoint_classes_and_templates(tiny, tmp_path):
    model, params = tiny
    w1 = zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("zeroshot_*.npy"))
    assert len(files) == 1
    # A doctored cache file is what comes back: proof that the second call reads the cache.
    np.save(files[0], w1 * 0 + 7)
    again = zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES, cache_dir=tmp_path)
    assert np.all(again == 7)
    # Other templates, other classes, other weights: other keys.
    zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES[:2], cache_dir=tmp_path)
    zsc.build_zeroshot_classifier(model, params, CLASSNAMES[:3], TEMPLATES, cache_dir=tmp_path)
    zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES, cache_dir=tmp_path, checkpoint_id="x")
    assert len(list(tmp_path.glob("zeroshot_*.npy"))) == 4
    # Unit columns: each class embedding is renormalised after the template average.
    np.testing.assert_allclose(np.linalg.norm(w1, axis=0), 1.0, atol=1e-5)


def _feature_batches(features, labels, batch_size, pad_to=None):
    """Batches whose 'image' is already a feature vector (the logits function is a plain matmul)."""
    for s in range(0, len(labels), batch_size):
        f, y = features[s : s + batch_size], labels[s : s + batch_size]
        mask = np.ones(len(y), np.int32)
        if pad_to and len(y) < pad_to:
            extra = pad_to - len(y)
            # Padding rows carry a label and features that would be *wrong*: they must not be counted.
            f = np.concatenate([f, -np.repeat(f[:1], extra, 0)])
            y = np.concatenate([y, np.repeat(y[:1], extra)])
            mask = np.concatenate([mask, np.zeros(extra, np.int32)])
        yield {"image": f, "label": y, "mask": mask}


def test_perfect_features_score_100_and_permuted_labels_score_chance(tiny):
    model, params = tiny
    classifier = zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSNAMES), 600)
    # Image features constructed to be perfect: each one is its class's text embedding plus small noise.
    feats = classifier.T[labels] + 0.01 * rng.normal(size=(600, classifier.shape[0]))
    logits_fn = lambda f: 100.0 * f @ classifier  # noqa: E731
    perfect = zsc.evaluate_logits(logits_fn, _feature_batches(feats, labels, 64, pad_to=64))
    assert perfect["acc1"] == 1.0 and perfect["acc5"] == 1.0 and perfect["mean_per_class_recall"] == 1.0
    assert perfect["num_examples"] == 600  # the padding rows of the last batch are not counted
    # The same features against shuffled labels: top-1 near 1/6, top-5 near 5/6.
    shuffled = rng.permutation(labels)
    chance = zsc.evaluate_logits(logits_fn, _feature_batches(feats, shuffled, 64))
    assert abs(chance["acc1"] - 1 / 6) < 0.06
    assert abs(chance["acc5"] - 5 / 6) < 0.06


def test_metric_definitions_on_hand_made_logits():
    logits = np.array(
        [
            [9, 1, 2, 3, 4, 5, 6],  # label 0: top-1 right
            [9, 8, 7, 6, 5, 4, 3],  # label 1: 2nd
            [9, 8, 7, 6, 5, 4, 3],  # label 6: 7th, outside top-5
            [0, 0, 9, 0, 0, 0, 0],  # label 2: right
            [1, 2, 3, 4, 5, 6, 7],  # padding (mask 0): would be right, must not count
        ],
        np.float32,
    )
    labels = np.array([0, 1, 6, 2, 6])
    mask = np.array([1, 1, 1, 1, 0])
    m = classification_metrics(logits, labels, mask)
    assert m["acc1"] == pytest.approx(2 / 4)
    assert m["acc5"] == pytest.approx(3 / 4)
    # Per-class recall over the classes present (0, 1, 2, 6): (1 + 0 + 1 + 0) / 4.
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    # Streaming in two parts gives the same numbers.
    meter = ClassificationMeter(7)
    meter.update(logits[:2], labels[:2], mask[:2])
    meter.update(logits[2:], labels[2:], mask[2:])
    assert meter.result() == m


def test_zeroshot_eval_on_images_end_to_end(tiny):
    """The library entry point the trainer calls: images in, metrics out, padding ignored."""
    model, params = tiny
    rng = np.random.default_rng(1)
    images = rng.normal(size=(20, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, len(CLASSNAMES), 20)
    ds = list(_feature_batches(images, labels, 8, pad_to=8))
    m = zeroshot.zeroshot_eval(model, params, ds, CLASSNAMES, TEMPLATES)
    assert m["num_examples"] == 20
    assert 0.0 <= m["acc1"] <= m["acc5"] <= 1.0
    # Same predictions as scoring the model's features by hand.
    from clip_jax.eval.features import extract_image_features

    feats, y = extract_image_features(model, params, ds)
    clf = zsc.build_zeroshot_classifier(model, params, CLASSNAMES, TEMPLATES)
    assert feats.shape == (20, 64) and np.array_equal(y, labels)
    assert m == classification_metrics(feats @ clf, labels)
