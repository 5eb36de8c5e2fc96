"""AdamW with CLIP's settings, the learning-rate schedule (schedules.py), weight-decay masks, freezing and lr
multipliers.

Parameters are addressed by their '/'-joined path, e.g. 'visual/transformer/resblocks_3/attn/qkv/kernel',
so freezing the image tower for LiT is `freeze=("^visual/",)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from clip_jax.sharding import dict_key_path
from clip_jax.train.schedules import make_schedule

# Parameters exempt from weight decay, as open_clip_train/main.py chooses them: every tensor that is 1-D in
# PyTorch's layout or whose name has "bn", "ln", "bias" or "logit_scale" in it. In clip_jax's layout that is
# biases (whatever their rank here: qkv's is [3, H, D]), LayerNorm gains and biases (under ln_*), the class
# embedding (the one 1-D weight) and the temperature and bias scalars. Token and positional embeddings,
# conv1 and the projections are decayed, as open_clip decays them.
NO_DECAY = (r"(^|/)bias$", r"(^|/)ln_[^/]*/", r"(^|/)class_embedding$", r"^logit_(scale|bias)$")


def param_paths(params: Any) -> Any:
    """A tree like `params` whose leaves are the '/'-joined key paths."""
    return jax.tree_util.tree_map_with_path(lambda path, _: dict_key_path(path), params)


def path_mask(params: Any, regexes: Sequence[str]) -> Any:
    """True where the path matches any of the regexes (re.search)."""
    compiled = [re.compile(r) for r in regexes]
    return jax.tree.map(lambda p: any(c.search(p) for c in compiled), param_paths(params))


def make_optimizer(
    params: Any,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    weight_decay: float = 0.2,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    grad_clip_norm: float | None = None,
    freeze: Sequence[str] = (),
    lr_mults: Sequence[tuple[str, float]] = (),
    end_lr_ratio: float = 0.0,
    no_decay: Sequence[str] = NO_DECAY,
    schedule: str = "cosine",
    cooldown_steps: int = 0,
    cooldown_power: float = 1.0,
    rsqrt_timescale: float = 10_000,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build the optimizer for `params` (a tree of arrays or ShapeDtypeStructs).

    Parameters whose path matches a `no_decay` regex get no weight decay. Frozen parameters get no update
    and no optimizer state (LiT). `lr_mults` scales the update of matching parameters (the last matching
    rule wins); with AdamW that is exactly an lr multiplier. `schedule` names the learning-rate schedule
    (clip_jax/train/schedules.py), which the cooldown and rsqrt arguments shape.
    """
    schedule = make_schedule(
        schedule,
        lr,
        total_steps,
        warmup_steps,
        end_lr_ratio=end_lr_ratio,
        cooldown_steps=cooldown_steps,
        cooldown_power=cooldown_power,
        rsqrt_timescale=rsqrt_timescale,
    )

    # Masks are functions of the tree they are applied to, so they also fit the partial trees that
    # multi_transform hands to the inner optimizer when some parameters are frozen.
    def decay_mask(tree: Any) -> Any:
        return jax.tree.map(lambda nd: not nd, path_mask(tree, no_decay))

    chain = []
    if grad_clip_norm:
        chain.append(optax.clip_by_global_norm(grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    if lr_mults:
        chain.append(_scale_by_path(lr_mults))
    tx = optax.chain(*chain)
    if freeze:
        frozen = path_mask(params, freeze)
        if not any(jax.tree.leaves(frozen)):
            raise ValueError(f"config.freeze {list(freeze)} matches no parameter")
        labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def _scale_by_path(lr_mults: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    rules = [(re.compile(r), float(m)) for r, m in lr_mults]

    def mult_for(path: str) -> float:
        hits = [m for c, m in rules if c.search(path)]
        return hits[-1] if hits else 1.0

    def update(updates, state, params=None):
        del params
        mults = jax.tree.map(mult_for, param_paths(updates))
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mults), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
