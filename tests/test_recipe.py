"""The default training recipe is open_clip's, checked against open_clip itself: which parameters are
weight-decayed, the learning rate of every step, and the distribution each tensor is initialised from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import open_clip
import pytest
import torch

from clip_jax.models import CLIP, init_params
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.train.optim import NO_DECAY, path_mask
from clip_jax.train.schedules import cosine_schedule
from clip_jax.weights import open_clip as oc_map

# Wide enough that a bias has 256 samples; 3 layers so that the text tower's depth-scaled std shows.
CFG = CLIPConfig(
    128,
    VisionConfig(image_size=64, patch_size=16, width=256, layers=3, head_width=64),
    TextConfig(context_length=77, width=256, heads=4, layers=3),
)


@pytest.fixture(scope="module")
def both():
    """(our params by open_clip key, open_clip's fresh model's tensors by key), both freshly initialised."""
    torch.manual_seed(0)
    ref = open_clip.CLIP(
        embed_dim=CFG.embed_dim,
        vision_cfg=dict(image_size=64, patch_size=16, width=256, layers=3, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=3),
    )
    ref_tensors = {n: p.detach().numpy() for n, p in ref.named_parameters()}
    params = jax.device_get(init_params(CLIP(CFG), jax.random.PRNGKey(0)))
    ours = {e.key: np.asarray(_get(params, e.path)) for e in oc_map.mapping(params)}
    return params, ours, ref_tensors


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_decayed_parameters_are_open_clips(both):
    params, ours, ref = both
    # open_clip_train/main.py's rule, quoted from the installed package so that a change there shows here
    # (read as text: importing it needs open_clip_train's data dependencies).
    rule = (
        """exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or 'logit_scale' in n"""
    )
    main_py = importlib.util.find_spec("open_clip_train.main").origin
    assert rule in Path(main_py).read_text()
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    theirs = {n for n, p in ref.items() if not exclude(n, p)}
    no_decay = path_mask(params, NO_DECAY)
    mine = {e.key for e in oc_map.mapping(params) if not _get(no_decay, e.path)}
    assert ours.keys() == ref.keys()
    assert mine == theirs, (sorted(mine - theirs), sorted(theirs - mine))
    # The embeddings are among them (clip_jax exempted them before), the class embedding is not.
    assert {"token_embedding.weight", "positional_embedding", "visual.positional_embedding"} <= mine
    assert "visual.class_embedding" not in mine


def test_decay_rule_holds_for_scanned_layers():
    model = CLIP(CFG, scan=True)
    shapes = jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0))
    flat = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(path_mask(shapes, NO_DECAY))[0]
    }
    assert (
        flat["visual/transformer/resblocks/ln_1/scale"] and flat["text/transformer/resblocks/attn/qkv/bias"]
    )
    assert not flat["visual/transformer/resblocks/mlp/c_fc/kernel"]


@pytest.mark.parametrize("warmup, total", [(10, 50), (1, 6), (0, 20), (100, 1000)])
def test_learning_rate_of_every_step_is_open_clips_cosine_lr(warmup, total):
    from open_clip_train.scheduler import cosine_lr

    class Optimizer:  # what cosine_lr writes its learning rate into
        param_groups = [{}]

    opt = Optimizer()
    adjust = cosine_lr(opt, 1e-3, warmup, total)
    theirs = []
    for step in range(total):
        adjust(step)
        theirs.append(opt.param_groups[0]["lr"])
    schedule = jax.jit(cosine_schedule(1e-3, total, warmup))
    ours = [float(schedule(step)) for step in range(total)]
    # The same formula in float32: relative rounding of a few ulps, and near the end of the cosine, where
    # the value is a difference 1 + cos(pi p) of nearly equal terms, an absolute error of at most
    # lr/2 * (pi * eps + eps) from rounding the angle and the cosine (eps = 2^-23).
    eps = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(ours, theirs, rtol=8 * eps, atol=1e-3 / 2 * (np.pi + 1) * eps)
    assert ours[0] > 0  # the first step trains


def test_end_lr_ratio_sets_the_floor():
    schedule = cosine_schedule(1.0, 100, 10, end_lr_ratio=0.1)
    assert float(schedule(9)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(99)) == pytest.approx(0.1, abs=1e-3)
    assert float(schedule(150)) == pytest.approx(0.1)


def _kurtosis(x):
    c = x - x.mean()
    return float(np.mean(c**4) / np.mean(c**2) ** 2)


def test_every_tensor_is_initialised_like_open_clips(both):
    """Mean, std and (for large tensors) kurtosis of each tensor agree with a fresh open_clip model of the
    same config within sampling error: for n samples of a distribution with std s, the difference of two
    independent sample means has standard error s*sqrt(2/n), of two sample stds at most s*sqrt(1/n)
    (kurtosis <= 3), of two sample kurtoses about sqrt(48/n) (normal); bounds are 6 standard errors."""
    _, ours, ref = both
    bad = []
    for key, r in ref.items():
        a, r = ours[key].astype(np.float64).ravel(), r.astype(np.float64).ravel()
        n, s = r.size, r.std()
        if s == 0:  # LayerNorm gains and biases, zero biases, scalars: exactly the same constant
            if not np.array_equal(a, r):
                bad.append(f"{key}: constant {r[0]} vs ours mean {a.mean()} std {a.std()}")
            continue
        if abs(a.mean() - r.mean()) > 6 * s * np.sqrt(2 / n):
            bad.append(f"{key}: mean {a.mean():.3g} vs {r.mean():.3g}")
        if abs(a.std() - s) > 6 * s / np.sqrt(n):
            bad.append(f"{key}: std {a.std():.4g} vs {s:.4g} (n={n})")
        if n >= 4096 and abs(_kurtosis(a) - _kurtosis(r)) > 6 * np.sqrt(48 / n):
            bad.append(f"{key}: kurtosis {_kurtosis(a):.3f} vs {_kurtosis(r):.3f} (normal 3, uniform 1.8)")
    assert not bad, "\n".join(bad)
