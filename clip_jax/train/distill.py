"""Distillation from a frozen teacher (open_clip's --distill-model / --distill-pretrained).

config.distill.teacher names any weights clip_jax reads (a training run, a converted params directory,
an open_clip / OpenAI / HF file); its model comes from the weights or config.distill.teacher_model. The
teacher is loaded once, placed on the run's mesh with the shardings of its parameters' logical axes, and
passed to the jitted step as an argument of its own: it is not in the TrainState, so the optimizer never
sees it, checkpoints do not carry it, and its forward runs outside the differentiated function.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from clip_jax.models.clip import CLIP, l2_normalize
from clip_jax.models.config import CLIPConfig


@dataclasses.dataclass(frozen=True)
class Teacher:
    model: CLIP
    params: Any  # on the mesh, with `shardings`
    shardings: Any

    def bind(self, jitted_step: Callable) -> Callable:
        """step(state, batch) of a jitted step(state, batch, teacher_params): the loop calls it as any step.
        Passed positionally (jit with in_shardings takes no keyword arguments), never closed over (the
        weights would be baked into the program as constants)."""
        return lambda state, batch: jitted_step(state, batch, self.params)


def check_distill_config(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the config.distill field that cannot work (checked before the run starts)."""
    distill = config.distill
    if not distill.teacher:
        if distill.teacher_model:
            raise ValueError("config.distill.teacher_model is set but config.distill.teacher is empty")
        return
    if "://" not in distill.teacher and not os.path.exists(distill.teacher):
        raise ValueError(
            f"config.distill.teacher={distill.teacher!r} does not exist: give a training workdir, a converted "
            "params directory or a weights file"
        )
    if not distill.weight > 0:
        raise ValueError(f"config.distill.weight={distill.weight!r} must be > 0")
    # As open_clip (its DistillClipLoss is a ClipLoss, and main.py asserts accum_freq == 1).
    if config.loss != "softmax":
        raise ValueError(
            f"config.distill.teacher needs config.loss='softmax' (open_clip's), got {config.loss!r}"
        )
    if config.accum_steps != 1:
        raise ValueError(f"config.distill.teacher needs config.accum_steps=1, got {config.accum_steps}")


def load_teacher(config: ml_collections.ConfigDict, student_cfg: CLIPConfig, mesh: Mesh) -> Teacher:
    """The frozen teacher of config.distill, its params placed on `mesh` by their logical axes."""
    from clip_jax import sharding
    from clip_jax.weights import load_pretrained

    model, params = load_pretrained(
        config.distill.teacher_model or None,
        config.distill.teacher,
        dtype=jnp.dtype(config.dtype),
        attention_impl=config.attention_impl or None,
    )
    _check_same_inputs(model.cfg, student_cfg, config.distill.teacher)
    cfg = model.cfg
    images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.text.context_length), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens)["params"])
    shardings = sharding.logical_to_mesh_sharding(boxed, mesh)
    return Teacher(model, jax.device_put(jax.device_get(params), shardings), shardings)


def _check_same_inputs(teacher: CLIPConfig, student: CLIPConfig, path: str) -> None:
    """The teacher sees the student's batch, so it must take the same images and token ids (open_clip
    assumes the same transforms and tokenizer too)."""
    pairs = {
        "image size": (teacher.vision.image_size, student.vision.image_size),
        "context length": (teacher.text.context_length, student.text.context_length),
        "vocabulary size": (teacher.text.vocab_size, student.text.vocab_size),
    }
    for what, (t, s) in pairs.items():
        if t != s:
            raise ValueError(
                f"config.distill.teacher={path!r} has {what} {t} but config.model has {s}; "
                "distil from a teacher that takes the student's inputs"
            )


def teacher_outputs(
    teacher: CLIP, params: Any, images: jax.Array, tokens: jax.Array
) -> tuple[jax.Array, ...]:
    """(image features, text features, exp(logit_scale)) of the teacher in eval mode (no dropout, BatchNorm
    on its running statistics, as open_clip's dist_model.eval()), with no gradient path back to it."""
    img, txt = teacher.apply({"params": params}, images, tokens, method=_encode_both)
    out = (l2_normalize(img), l2_normalize(txt), jnp.exp(params["logit_scale"]))
    return jax.lax.stop_gradient(out)


def _encode_both(module: CLIP, images: jax.Array, tokens: jax.Array):
    return module.encode_image(images, train=False), module.encode_text(tokens)
