"""Every config.schedule, step by step against the function it is named after: open_clip_train's
schedulers (run here, on a stand-in optimizer) and big_vision's create_learning_rate_schedule (its
formula written out below from the source, since big_vision is not installed); and each schedule's
fields validated at start, naming the field."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from clip_jax.train.config import default_config, field_docs, validate_config
from clip_jax.train.schedules import SCHEDULES, make_schedule

LR = 1e-3
EPS = float(np.finfo(np.float32).eps)


def ours(name: str, total: int, warmup: int, **kw) -> list[float]:
    schedule = jax.jit(make_schedule(name, LR, total, warmup, **kw))
    return [float(schedule(step)) for step in range(total)]


def open_clips(scheduler, *args) -> list[float]:
    """The lr open_clip_train's `scheduler(optimizer, *args)` writes into the optimizer at each step."""

    class Optimizer:  # all the schedulers touch: param_groups[i]["lr"]
        param_groups = [{}]

    opt = Optimizer()
    adjust = scheduler(opt, *args)
    total = args[2]
    out = []
    for step in range(total):
        adjust(step)
        out.append(opt.param_groups[0]["lr"])
    return out


def assert_float32_close(got, want):
    # The same formula in float32 against float64: a few ulps relative, and an absolute floor for the values
    # near 0 that are differences of nearly equal terms (the end of a decay).
    np.testing.assert_allclose(got, want, rtol=8 * EPS, atol=4 * LR * EPS)


@pytest.mark.parametrize("warmup, total", [(10, 50), (1, 6), (0, 20)])
def test_cosine_is_open_clips_cosine_lr(warmup, total):
    from open_clip_train.scheduler import cosine_lr

    assert_float32_close(ours("cosine", total, warmup), open_clips(cosine_lr, LR, warmup, total))


@pytest.mark.parametrize("warmup, total", [(10, 50), (0, 20)])
def test_const_is_open_clips_const_lr(warmup, total):
    from open_clip_train.scheduler import const_lr

    assert_float32_close(ours("const", total, warmup), open_clips(const_lr, LR, warmup, total))


@pytest.mark.parametrize(
    "warmup, total, cooldown, power, end_ratio",
    [(10, 50, 20, 1.0, 0.0), (5, 40, 35, 2.0, 0.0), (0, 30, 1, 1.0, 0.0), (3, 30, 10, 0.5, 0.1)],
)
def test_const_cooldown_is_open_clips_const_lr_cooldown(warmup, total, cooldown, power, end_ratio):
    from open_clip_train.scheduler import const_lr_cooldown

    got = ours(
        "const-cooldown", total, warmup, cooldown_steps=cooldown, cooldown_power=power, end_lr_ratio=end_ratio
    )
    want = open_clips(const_lr_cooldown, LR, warmup, total, cooldown, power, LR * end_ratio)
    assert_float32_close(got, want)
    # Held at lr up to the cooldown; open_clip's cooldown reaches its end at step `total`, never taken.
    held = got[total - cooldown - 1] if total - cooldown - 1 >= warmup else LR
    assert held == pytest.approx(LR, rel=EPS) and (got[-1] < LR or cooldown == 1)


def big_vision_lr(decay_type, step, total, warmup, cooldown, *, timescale=10_000, end=0.0):
    """big_vision/utils.py create_learning_rate_schedule(total_steps, base=LR, decay_type=...,
    warmup_steps=, cooldown_steps=, timescale=, linear_end=)'s step_fn, written out from the source
    (github.com/google-research/big_vision, commit 0127fb6b): shift 0, power 1, no batch-size scaling."""
    lr = LR
    progress = min(max((step - warmup) / float(total - warmup), 0.0), 1.0)
    if decay_type == "linear":
        lr = end + (lr - end) * (1.0 - progress) ** 1
    elif decay_type == "rsqrt":
        lr = (
            lr / math.sqrt(1 + (step - warmup) / timescale)
            if warmup <= step
            else lr / math.sqrt(1 + 0 / timescale)
        )
    if warmup:
        lr = lr * min(1.0, step / warmup)
    if cooldown:
        lr = lr * min(1.0, (total - step) / cooldown)
    return lr


@pytest.mark.parametrize(
    "warmup, total, cooldown, timescale",
    [(10, 60, 0, 10_000), (10, 60, 15, 7), (0, 30, 30, 3), (1, 8, 2, 1)],
)
def test_rsqrt_is_big_visions(warmup, total, cooldown, timescale):
    got = ours("rsqrt", total, warmup, cooldown_steps=cooldown, rsqrt_timescale=timescale)
    want = [big_vision_lr("rsqrt", s, total, warmup, cooldown, timescale=timescale) for s in range(total)]
    assert_float32_close(got, want)
    if warmup:
        assert got[0] == 0.0  # big_vision's warmup: the first step has lr 0


@pytest.mark.parametrize(
    "warmup, total, cooldown, end_ratio",
    [(10, 60, 0, 0.0), (10, 60, 15, 0.0), (0, 30, 5, 0.2), (3, 9, 9, 0.5)],
)
def test_linear_is_big_visions(warmup, total, cooldown, end_ratio):
    got = ours("linear", total, warmup, cooldown_steps=cooldown, end_lr_ratio=end_ratio)
    want = [big_vision_lr("linear", s, total, warmup, cooldown, end=LR * end_ratio) for s in range(total)]
    assert_float32_close(got, want)


def test_every_schedule_field_is_documented_for_help_config():
    docs = field_docs()
    for field in ("schedule", "cooldown_steps", "cooldown_power", "rsqrt_timescale"):
        assert docs[field], field
    assert all(name in docs["schedule"] for name in SCHEDULES)


def tiny(**changes):
    c = default_config()
    for k, v in {"model": "tiny", "total_steps": 100, "warmup_steps": 10, **changes}.items():
        c[k] = v
    return c


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schedule": "step"}, r"config\.schedule='step'; choose from"),
        (
            {"schedule": "const-cooldown"},
            r"config\.cooldown_steps=0 must be in \[1, total_steps - warmup_steps = 90\]",
        ),
        ({"schedule": "const-cooldown", "cooldown_steps": 91}, r"config\.cooldown_steps=91 must be in"),
        ({"cooldown_steps": 5}, r"config\.cooldown_steps=5 does nothing with config\.schedule='cosine'"),
        (
            {"schedule": "rsqrt", "cooldown_steps": 101},
            r"config\.cooldown_steps=101 must be in \[0, config\.total",
        ),
        (
            {"schedule": "linear", "warmup_steps": 100},
            r"config\.warmup_steps=100 must be < config\.total_steps",
        ),
        ({"schedule": "rsqrt", "cooldown_power": 2.0}, r"config\.cooldown_power=2\.0 applies to"),
        (
            {"schedule": "const-cooldown", "cooldown_steps": 5, "cooldown_power": 0.0},
            r"config\.cooldown_power=0",
        ),
        ({"schedule": "rsqrt", "rsqrt_timescale": 0}, r"config\.rsqrt_timescale=0 must be > 0"),
        ({"schedule": "const", "end_lr_ratio": 0.1}, r"config\.end_lr_ratio=0\.1 does nothing with"),
    ],
)
def test_schedule_fields_are_validated_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_config(tiny(**changes))


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_validates_with_its_fields(name):
    cooldown = {"const-cooldown": 20, "rsqrt": 20, "linear": 20}.get(name, 0)
    validate_config(tiny(schedule=name, cooldown_steps=cooldown))
