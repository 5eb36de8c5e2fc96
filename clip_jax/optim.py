"""AdamW with CLIP's settings, warmup + cosine schedule, weight-decay masks, freezing and lr multipliers.

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

# CLIP excludes biases, norm gains, embeddings and the temperature from weight decay.
NO_DECAY_REGEX = r"(^|/)(bias|scale|logit_scale|logit_bias)$|embedding"


def param_paths(params: Any) -> Any:
    """A tree like `params` whose leaves are the '/'-joined key paths."""
    return jax.tree_util.tree_map_with_path(lambda path, _: dict_key_path(path), params)


def path_mask(params: Any, regexes: Sequence[str]) -> Any:
    """True where the path matches any of the regexes (re.search)."""
    compiled = [re.compile(r) for r in regexes]
    return jax.tree.map(lambda p: any(c.search(p) for c in compiled), param_paths(params))


def lr_schedule(lr: float, total_steps: int, warmup_steps: int, end_lr_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * end_lr_ratio` at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=lr * end_lr_ratio,
    )


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
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build the optimizer for `params` (a tree of arrays or ShapeDtypeStructs).

    Frozen parameters get no update and no optimizer state (LiT). `lr_mults` scales the update of
    matching parameters (the last matching rule wins); with AdamW that is exactly an lr multiplier.
    """
    schedule = lr_schedule(lr, total_steps, warmup_steps, end_lr_ratio)

    # Masks are functions of the tree they are applied to, so they also fit the partial trees that
    # multi_transform hands to the inner optimizer when some parameters are frozen.
    def decay_mask(tree: Any) -> Any:
        return jax.tree.map(lambda nd: not nd, path_mask(tree, [NO_DECAY_REGEX]))

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
