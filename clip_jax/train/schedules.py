"""Learning-rate schedules by name (config.schedule), each the function of the codebase it is named after.

`cosine`, `const` and `const-cooldown` are open_clip_train/scheduler.py's cosine_lr, const_lr and
const_lr_cooldown, in steps: warmup lr * (step + 1) / warmup_steps, so the first step already trains.
`rsqrt` and `linear` are big_vision/utils.py create_learning_rate_schedule's decay types, with its own
warmup (lr * step / warmup_steps: the first step has lr 0) and its linear cooldown over the last
cooldown_steps, multiplied onto the decay. Each is tested step by step against its reference
(tests/test_schedules.py).

`step` counts from 0, the step being taken (optax's count before the update).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "const", "const-cooldown", "rsqrt", "linear")
# Schedules that end at lr * end_lr_ratio (the others have no end value to set).
ENDING_SCHEDULES = ("cosine", "const-cooldown", "linear")
# Schedules with a cooldown over config.cooldown_steps (open_clip's in const-cooldown, big_vision's on top
# of rsqrt and linear).
COOLDOWN_SCHEDULES = ("const-cooldown", "rsqrt", "linear")


def make_schedule(
    name: str,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    *,
    end_lr_ratio: float = 0.0,
    cooldown_steps: int = 0,
    cooldown_power: float = 1.0,
    rsqrt_timescale: float = 10_000,
) -> optax.Schedule:
    """The schedule `name` (one of SCHEDULES) as a jittable function of the step."""
    if name == "cosine":
        return cosine_schedule(lr, total_steps, warmup_steps, end_lr_ratio)
    if name == "const":
        return const_cooldown_schedule(lr, total_steps, warmup_steps, cooldown_steps=0)
    if name == "const-cooldown":
        return const_cooldown_schedule(
            lr, total_steps, warmup_steps, cooldown_steps, cooldown_power, end_lr_ratio
        )
    if name in ("rsqrt", "linear"):
        return big_vision_schedule(
            name,
            lr,
            total_steps,
            warmup_steps,
            cooldown_steps,
            end_lr_ratio=end_lr_ratio,
            timescale=rsqrt_timescale,
        )
    raise ValueError(f"config.schedule={name!r}; choose from {SCHEDULES}")


def _open_clip_warmup(lr: float, warmup_steps: int, step: jax.Array) -> jax.Array:
    return lr * (step + 1.0) / max(warmup_steps, 1)


def cosine_schedule(
    lr: float, total_steps: int, warmup_steps: int, end_lr_ratio: float = 0.0
) -> optax.Schedule:
    """open_clip's `cosine_lr`: warmup, then cosine decay from lr to lr * end_lr_ratio at `total_steps`
    (with end_lr_ratio 0, open_clip's value for value)."""
    end = lr * end_lr_ratio
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end + (lr - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, _open_clip_warmup(lr, warmup_steps, step), cosine)

    return schedule


def const_cooldown_schedule(
    lr: float,
    total_steps: int,
    warmup_steps: int,
    cooldown_steps: int,
    cooldown_power: float = 1.0,
    end_lr_ratio: float = 0.0,
) -> optax.Schedule:
    """open_clip's `const_lr_cooldown` (`const_lr` with cooldown_steps 0): warmup, lr held constant, then
    over the last `cooldown_steps` steps (1 - t) ** cooldown_power from lr to lr * end_lr_ratio
    (open_clip's --lr-cooldown-end as a ratio). The constant part is the same whatever the run's length,
    which is what lets a cooldown branch off any checkpoint of a constant run (Hägele et al. 2024)."""
    end = lr * end_lr_ratio
    cooldown_start = total_steps - cooldown_steps

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        if cooldown_steps:
            done = jnp.maximum(step - cooldown_start, 0.0) / cooldown_steps
            held = end + (lr - end) * (1.0 - done) ** cooldown_power
            held = jnp.where(step < cooldown_start, lr, held)
        else:
            held = jnp.full_like(step, lr)
        return jnp.where(step < warmup_steps, _open_clip_warmup(lr, warmup_steps, step), held)

    return schedule


def big_vision_schedule(
    decay_type: str,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    cooldown_steps: int = 0,
    *,
    end_lr_ratio: float = 0.0,
    timescale: float = 10_000,
) -> optax.Schedule:
    """big_vision's create_learning_rate_schedule for decay_type "rsqrt" (shift 0) or "linear" (power 1,
    `linear_end` = lr * end_lr_ratio), with its multiplicative warmup and cooldown."""

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        if decay_type == "linear":
            progress = jnp.clip((step - warmup_steps) / float(max(total_steps - warmup_steps, 1)), 0.0, 1.0)
            end = lr * end_lr_ratio
            value = end + (lr - end) * (1.0 - progress)
        elif decay_type == "rsqrt":
            # Flat at lr during the warmup (which scales it), then 1/sqrt decay after it.
            value = jnp.where(
                warmup_steps <= step, lr / jnp.sqrt(1.0 + (step - warmup_steps) / timescale), lr
            )
        else:
            raise ValueError(f"big_vision decay type {decay_type!r}: expected 'rsqrt' or 'linear'")
        if warmup_steps:
            value = value * jnp.minimum(1.0, step / warmup_steps)
        if cooldown_steps:
            value = value * jnp.minimum(1.0, (total_steps - step) / cooldown_steps)
        return value

    return schedule


def check_schedule_config(config: Any) -> None:
    """ValueError naming the first schedule field (config.schedule, cooldown_*, rsqrt_timescale,
    end_lr_ratio) that is invalid or set for a schedule that does not use it."""
    name, total, warmup, cooldown = (
        config.schedule,
        config.total_steps,
        config.warmup_steps,
        config.cooldown_steps,
    )
    if name not in SCHEDULES:
        raise ValueError(f"config.schedule={name!r}; choose from {SCHEDULES}")
    if name not in COOLDOWN_SCHEDULES and cooldown:
        raise ValueError(
            f"config.cooldown_steps={cooldown} does nothing with config.schedule={name!r}; "
            f"use one of {COOLDOWN_SCHEDULES} or set it to 0"
        )
    if name == "const-cooldown" and not 1 <= cooldown <= total - warmup:
        raise ValueError(
            f"config.cooldown_steps={cooldown} must be in [1, total_steps - warmup_steps = {total - warmup}] "
            "with config.schedule='const-cooldown'"
        )
    if name in ("rsqrt", "linear") and not 0 <= cooldown <= total:
        raise ValueError(f"config.cooldown_steps={cooldown} must be in [0, config.total_steps={total}]")
    if name in ("rsqrt", "linear", "const-cooldown") and total > 1 and warmup >= total:
        # big_vision's own assertion, and the decay would divide by zero.
        raise ValueError(
            f"config.warmup_steps={warmup} must be < config.total_steps={total} with schedule {name!r}"
        )
    if name != "const-cooldown" and config.cooldown_power != 1.0:
        raise ValueError(
            f"config.cooldown_power={config.cooldown_power} applies to config.schedule='const-cooldown' only"
        )
    if config.cooldown_power <= 0:
        raise ValueError(f"config.cooldown_power={config.cooldown_power} must be > 0")
    if config.rsqrt_timescale <= 0:
        raise ValueError(f"config.rsqrt_timescale={config.rsqrt_timescale} must be > 0")
    if name not in ENDING_SCHEDULES and config.end_lr_ratio:
        raise ValueError(
            f"config.end_lr_ratio={config.end_lr_ratio} does nothing with config.schedule={name!r}; "
            f"it sets the end of {ENDING_SCHEDULES}"
        )
