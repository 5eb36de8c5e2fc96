"""The contrastive train step: forward both towers, loss, backward, optimizer update.

Kept free of tensorflow and of any I/O so that it runs on an accelerator box with only jax/flax/optax
(the GPU benchmark uses it as is). `train.py` jits it with explicit shardings.

Gradient accumulation is exact for contrastive losses (as open_clip's `accum_freq`): the features of
every micro-batch are computed first without gradients, the loss over the whole batch gives the
cotangents of all features, and each micro-batch is then re-run under `jax.vjp` with its slice of those
cotangents. The summed parameter gradients equal those of one step on the k-times larger batch.

BatchNorm (ResNet towers): its running statistics are leaves of the params tree (see
`clip_jax.models.resnet`), so they live in the TrainState and its checkpoints like any parameter. The
forward pass normalises with the batch's statistics (under jit on the mesh: the global batch's, as one
device would compute them) and returns the updated running statistics; the step writes them into the
params after the optimizer update, so the optimizer never changes them (their gradients are zero).
With micro-batches each micro-batch updates them in turn, as k steps of torch's BatchNorm would, and the
features of a micro-batch are normalised by its own statistics (BatchNorm couples a batch's rows, so
accumulation is exact for a ResNet only up to that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from clip_jax.models.clip import CLIP, l2_normalize
from clip_jax.models.resnet import BATCH_STATS, batch_stats_of, merge_batch_stats
from clip_jax.train.distill import teacher_outputs
from clip_jax.train.ema import ema_decay_at, initial_ema, update_ema
from clip_jax.train.losses import contrastive_loss, distill_loss

# OpenAI clamps the learned temperature so that exp(logit_scale) <= 100.
MAX_LOG_SCALE = math.log(100.0)

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # Base key; the key of step s is fold_in(rng, s), so resuming needs no RNG bookkeeping.
    rng: jax.Array


@flax.struct.dataclass
class EmaTrainState(TrainState):
    """The state of a run with config.ema_decay > 0: TrainState and the EMA of the params (train/ema.py).

    A class of its own rather than a field that is None without EMA: orbax records a None field in the
    checkpoint's tree, so checkpoints written before EMA existed would no longer restore."""

    ema_params: Any


def init_train_state(
    params: Any, tx: optax.GradientTransformation, rng: jax.Array, *, ema: bool = False
) -> TrainState:
    """The state at step 0; with `ema` an EmaTrainState whose average starts as a copy of `params`."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
    if not ema:
        return state
    return EmaTrainState(**vars(state), ema_params=initial_ema(params))


def init_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
    """(parameter-init key, train-state key) of a run with `seed`: the trainer initialises the model from
    the first, so whatever evaluates "the model at initialisation" must use it too."""
    param_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    return param_rng, state_rng


# Bits of the `nonfinite` metric: which quantities of a step are NaN or infinite.
NONFINITE_BITS = {"loss": 1, "gradient norm": 2, "updated parameters": 4}


def nonfinite_quantities(code: int) -> list[str]:
    """The names of the quantities set in a `nonfinite` metric value."""
    return [name for name, bit in NONFINITE_BITS.items() if int(code) & bit]


def make_loss_and_grads(
    model: CLIP,
    *,
    loss: str = "softmax",
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    accum_steps: int = 1,
) -> Callable[[Any, Batch, jax.Array], tuple[jax.Array, Any]]:
    """Return f(params, batch, rng) -> (loss, grads) of the contrastive loss over the whole batch.

    With accum_steps > 1 the batch is processed in that many micro-batches (see the module docstring);
    the result equals the one-pass value up to float rounding. With a mesh the loss is the sharded one
    that never builds the global B x B logits on one device.
    """
    f = make_loss_grads_and_stats(model, loss=loss, mesh=mesh, batch_axes=batch_axes, accum_steps=accum_steps)
    return lambda params, batch, rng: f(params, batch, rng)[:2]


def make_loss_grads_and_stats(
    model: CLIP,
    *,
    loss: str = "softmax",
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    accum_steps: int = 1,
) -> Callable[[Any, Batch, jax.Array], tuple[jax.Array, Any, dict]]:
    """`make_loss_and_grads`, whose f also returns the BatchNorm running statistics updated by the batch
    (a tree in the params' nesting, {} for a model without BatchNorm)."""
    f = make_loss_grads_stats_and_parts(
        model, loss=loss, mesh=mesh, batch_axes=batch_axes, accum_steps=accum_steps
    )
    return lambda params, batch, rng: f(params, batch, rng)[:3]


def make_loss_grads_stats_and_parts(
    model: CLIP,
    *,
    loss: str = "softmax",
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    accum_steps: int = 1,
    teacher: CLIP | None = None,
    distill_weight: float = 1.0,
) -> Callable[..., tuple[jax.Array, Any, dict, dict]]:
    """`make_loss_grads_and_stats`, whose f(params, batch, rng, teacher_params=None) also returns the
    loss's parts ({} without a teacher). With a `teacher` (clip_jax/train/distill.py) the loss is
    contrastive + distill_weight * open_clip's DistillClipLoss term, parts {contrastive_loss, distill_loss}."""
    if teacher is not None and accum_steps > 1:
        raise ValueError("distillation needs accum_steps=1 (as open_clip's)")
    has_bias = model.cfg.init_logit_bias is not None

    def features(params: Any, images: jax.Array, tokens: jax.Array, rng: jax.Array):
        (img, txt), updated = model.apply(
            {"params": params},
            images,
            tokens,
            train=True,
            rngs={"dropout": rng},
            method=_encode_both,
            mutable=[BATCH_STATS],
        )
        return (l2_normalize(img), l2_normalize(txt)), dict(updated.get(BATCH_STATS, {}))

    def loss_from(img, txt, log_scale, bias):
        return contrastive_loss(
            loss, img, txt, jnp.exp(log_scale), bias, mesh=mesh, batch_axes=tuple(batch_axes)
        )

    def full_batch_grads(params, batch, rng, teacher_params=None):
        # The teacher runs outside the differentiated function, on params that are an argument of their
        # own: value_and_grad below differentiates the student's params only.
        if teacher is not None:
            targets = teacher_outputs(teacher, teacher_params, batch["image"], batch["text"])

        def loss_fn(p):
            (img, txt), stats = features(p, batch["image"], batch["text"], rng)
            contrastive = loss_from(img, txt, p["logit_scale"], p.get("logit_bias"))
            if teacher is None:
                return contrastive, (stats, {})
            distill = distill_loss(img, txt, jnp.exp(p["logit_scale"]), *targets)
            parts = {"contrastive_loss": contrastive, "distill_loss": distill}
            return contrastive + distill_weight * distill, (stats, parts)

        (loss_value, (stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss_value, grads, stats, parts

    def accumulated_grads(params, batch, rng, teacher_params=None):
        del teacher_params  # no teacher with accum_steps > 1 (refused above, as open_clip does)
        micro = jax.tree.map(lambda x: _split_micro(x, accum_steps), batch)
        rngs = jax.random.split(rng, accum_steps)

        def fwd(stats, xs):
            # Each micro-batch's BatchNorm update starts from the previous one's running statistics.
            mb, r = xs
            out, stats = features(merge_batch_stats(params, stats), mb["image"], mb["text"], r)
            return stats, out

        stats, (img, txt) = jax.lax.scan(fwd, batch_stats_of(params), (micro, rngs))
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
        direct = {"logit_scale": params["logit_scale"]}
        if has_bias:
            direct["logit_bias"] = params["logit_bias"]

        def batch_loss(img, txt, direct):
            return loss_from(flat(img), flat(txt), direct["logit_scale"], direct.get("logit_bias"))

        loss_value, (d_img, d_txt, d_direct) = jax.value_and_grad(batch_loss, argnums=(0, 1, 2))(
            img, txt, direct
        )

        def bwd(acc, xs):
            mb, r, gi, gt = xs
            _, vjp = jax.vjp(lambda p: features(p, mb["image"], mb["text"], r)[0], params)
            (g,) = vjp((gi, gt))
            return jax.tree.map(jnp.add, acc, g), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, _ = jax.lax.scan(bwd, zeros, (micro, rngs, d_img, d_txt))
        grads = dict(grads)
        for k, g in d_direct.items():
            grads[k] = grads[k] + g
        return loss_value, grads, stats, {}

    return accumulated_grads if accum_steps > 1 else full_batch_grads


def make_train_step(
    model: CLIP,
    tx: optax.GradientTransformation,
    *,
    loss: str = "softmax",
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    accum_steps: int = 1,
    schedule: optax.Schedule | None = None,
    teacher: CLIP | None = None,
    distill_weight: float = 1.0,
    ema_decay: float = 0.0,
    ema_warmup: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Return step(state, batch) -> (state, metrics); not jitted, so the caller chooses the shardings.

    With ema_decay > 0 the state is an EmaTrainState (init_train_state(..., ema=True)); the step moves
    them towards the updated params (clip_jax/train/ema.py) and reports the decay used as ema_decay.

    metrics["nonfinite"] is 0 for a healthy step, else the NONFINITE_BITS of the quantities that are NaN
    or infinite (loss, gradient norm, updated parameters): one fused check that the trainer reads with
    the loss, so a bad step never reaches a checkpoint.

    With a `teacher` (distillation, clip_jax/train/distill.py) it is step(state, batch, teacher_params):
    the teacher's params are never differentiated nor updated; metrics add contrastive_loss, distill_loss.
    """
    loss_and_grads = make_loss_grads_stats_and_parts(
        model,
        loss=loss,
        mesh=mesh,
        batch_axes=batch_axes,
        accum_steps=accum_steps,
        teacher=teacher,
        distill_weight=distill_weight,
    )
    has_bias = model.cfg.init_logit_bias is not None

    def step(
        state: TrainState, batch: Batch, teacher_params: Any = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss_value, grads, batch_stats, loss_parts = loss_and_grads(state.params, batch, rng, teacher_params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The running statistics are the batch's, whatever the optimizer (weight decay) made of them.
        params = merge_batch_stats(params, batch_stats)
        params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, MAX_LOG_SCALE)
        grad_norm = optax.global_norm(grads)
        params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        bits = NONFINITE_BITS
        nonfinite = (
            jnp.where(jnp.isfinite(loss_value), 0, bits["loss"])
            + jnp.where(jnp.isfinite(grad_norm), 0, bits["gradient norm"])
            + jnp.where(params_finite, 0, bits["updated parameters"])
        ).astype(jnp.int32)
        metrics = {
            "loss": loss_value,
            "logit_scale": jnp.exp(params["logit_scale"]),
            "grad_norm": grad_norm,
            "nonfinite": nonfinite,
            **loss_parts,
        }
        if has_bias:
            metrics["logit_bias"] = params["logit_bias"]
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if ema_decay > 0:
            decay_t = ema_decay_at(state.step, ema_decay, ema_warmup)
            new_state = new_state.replace(ema_params=update_ema(state.ema_params, params, decay_t))
            metrics["ema_decay"] = decay_t
        return new_state, metrics

    return step


def _encode_both(module: CLIP, images: jax.Array, tokens: jax.Array, train: bool = False):
    return module.encode_image(images, train=train), module.encode_text(tokens)


def _split_micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, j+2k, ...

    Strided rather than contiguous, so that each device's contiguous block of the batch holds an equal
    share of every micro-batch and splitting moves no data between devices.
    """
    b = x.shape[0]
    if b % k:
        raise ValueError(f"batch size {b} is not divisible by config.accum_steps={k}")
    return jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)
