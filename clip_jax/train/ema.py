"""Exponential moving average (EMA) of the parameters, updated inside the jitted train step.

The average starts at the initial params and after each step moves towards the updated ones:
`ema -= (1 - decay_t) * (ema - params)` (tf.train.ExponentialMovingAverage's update). With warmup the
decay of the update taken from state step t is `min(decay, (1 + t) / (10 + t))`, TF's `num_updates`
rule (`ExponentialMovingAverage(decay, num_updates=global_step)`), so that the average forgets the random
initialisation within the first steps instead of over ~1 / (1 - decay) of them.

Free of tensorflow and I/O, like step.py.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The decay used by the update after the optimizer step taken from `step` (0 for the first)."""
    decay = jnp.float32(decay)
    if not warmup:
        return decay
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update_ema(ema_params: Any, params: Any, decay_t: jax.Array) -> Any:
    """The average moved towards `params` by (1 - decay_t) of the distance, leaf by leaf."""
    rate = 1.0 - decay_t
    return jax.tree.map(lambda e, p: e - (rate * (e - p)).astype(e.dtype), ema_params, params)


def initial_ema(params: Any) -> Any:
    """A copy of `params` (not the same buffers: the train state is donated to the step, and one
    buffer may not be donated twice)."""
    return jax.tree.map(jnp.copy, params)
