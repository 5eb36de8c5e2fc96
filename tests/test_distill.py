"""Distillation from a frozen teacher (config.distill, clip_jax/train/distill.py): the loss term against
open_clip's DistillClipLoss, the train step (teacher frozen, not differentiated, loss = contrastive +
weight * distill computed outside), the config checks, and a 2-step run of the trainer."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clip_jax.models.clip import CLIP, random_params
from clip_jax.models.config import get_model_config
from clip_jax.train.config import default_config, validate_config
from clip_jax.train.distill import teacher_outputs
from clip_jax.train.losses import distill_loss, softmax_loss
from clip_jax.train.step import init_train_state, make_train_step

WEIGHT = 0.5
STUDENT_CFG = get_model_config("tiny")
# Another architecture than the student's (as distillation allows), taking the same inputs.
TEACHER_CFG = STUDENT_CFG.replace(embed_dim=32)


def unit_rows(rng, n, e):
    x = rng.standard_normal((n, e)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_distill_loss_matches_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img, txt = unit_rows(rng, 8, 16), unit_rows(rng, 8, 16)
    t_img, t_txt = unit_rows(rng, 8, 24), unit_rows(rng, 8, 24)  # the teacher's own embedding width
    scale, t_scale = 14.3, 52.0
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    ref_contrastive, ref_distill = open_clip_loss.DistillClipLoss()(
        t(img), t(txt), torch.tensor(scale), t(t_img), t(t_txt), torch.tensor(t_scale)
    )
    ours = distill_loss(img, txt, scale, t_img, t_txt, t_scale)
    np.testing.assert_allclose(float(ours), ref_distill.item(), rtol=2e-6)
    np.testing.assert_allclose(float(softmax_loss(img, txt, scale)), ref_contrastive.item(), rtol=2e-6)
    # Not the contrastive loss under another name: a teacher that agrees with the student costs less.
    agreeing = distill_loss(img, txt, scale, img, txt, scale)
    assert float(agreeing) < float(ours)


def count_dots(jaxpr) -> int:
    """dot_general equations in a jaxpr and every sub-jaxpr (pjit, remat, custom_vjp ...)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "dot_general"
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += count_dots(inner)
    return n


@pytest.fixture(scope="module")
def tiny_pair():
    student, teacher = CLIP(STUDENT_CFG), CLIP(TEACHER_CFG)
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.standard_normal((4, 32, 32, 3)).astype(np.float32),
        "text": rng.integers(1, 49407, (4, 77)).astype(np.int32),
    }
    return student, random_params(student, seed=0), teacher, random_params(teacher, seed=1), batch


def test_step_adds_the_distill_term_and_leaves_the_teacher_alone(tiny_pair):
    student, s_params, teacher, t_params, batch = tiny_pair
    tx = optax.adamw(1e-3)
    step = make_train_step(student, tx, teacher=teacher, distill_weight=WEIGHT)
    jitted = jax.jit(step, donate_argnums=0)
    t_params_dev = jax.device_put(t_params)
    before = jax.device_get(t_params_dev)
    state = init_train_state(jax.device_put(s_params), tx, jax.random.key(0))
    for _ in range(2):
        params = jax.device_get(state.params)
        state, metrics = jitted(state, batch, t_params_dev)
        # The loss computed outside the step, from both models' forward passes.
        img, txt, scale = student.apply({"params": params}, batch["image"], batch["text"])
        t_img, t_txt, t_scale = teacher_outputs(teacher, t_params, batch["image"], batch["text"])
        contrastive = softmax_loss(img, txt, scale)
        distill = distill_loss(img, txt, scale, t_img, t_txt, t_scale)
        np.testing.assert_allclose(float(metrics["contrastive_loss"]), float(contrastive), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["distill_loss"]), float(distill), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["loss"]), float(contrastive + WEIGHT * distill), rtol=1e-5)
    # The teacher is bit-identical after the steps, and the student did train.
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(t_params_dev)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.device_get(state.params)["visual"]["proj"], s_params["visual"]["proj"])

    # Not differentiated: the step with a teacher has the plain step's matrix products plus the teacher's
    # forward ones and a few of the distill term's logits (differentiating the teacher would add its
    # backward: about twice its forward's).
    plain = make_train_step(student, tx)
    state = init_train_state(jax.device_put(s_params), tx, jax.random.key(0))
    n_plain = count_dots(jax.make_jaxpr(plain)(state, batch).jaxpr)
    n_distill = count_dots(jax.make_jaxpr(step)(state, batch, t_params).jaxpr)
    fwd = lambda p: teacher_outputs(teacher, p, batch["image"], batch["text"])  # noqa: E731
    n_teacher = count_dots(jax.make_jaxpr(fwd)(t_params).jaxpr)
    assert n_teacher > 10
    assert n_teacher <= n_distill - n_plain <= n_teacher + 4
    # And no gradient reaches it through the loss.
    from clip_jax.train.step import make_loss_grads_stats_and_parts

    f = make_loss_grads_stats_and_parts(student, teacher=teacher, distill_weight=WEIGHT)
    g = jax.grad(lambda tp: f(s_params, batch, jax.random.key(0), tp)[0])(t_params)
    assert all(not np.any(x) for x in jax.tree.leaves(g))


def distill_config(teacher: str = "", **changes):
    c = default_config()
    settings = {
        "model": "tiny",
        "batch_size": 8,
        "total_steps": 2,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "log_every": 1,
        "report_to": (),
        **changes,
    }
    for k, v in settings.items():
        c[k] = v
    c.distill.teacher = teacher
    c.distill.weight = WEIGHT
    return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from clip_jax.weights.params_io import save_params

    path = tmp_path_factory.mktemp("teacher") / "params"
    save_params(path, random_params(CLIP(TEACHER_CFG), seed=1), TEACHER_CFG)
    return path


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"teacher": "/nonexistent/teacher"}, "config.distill.teacher="),
        ({"loss": "sigmoid", "model": "tiny-siglip"}, "config.loss='softmax'"),
        ({"accum_steps": 2}, "config.accum_steps=1"),
        ({"distill_weight": 0.0}, "config.distill.weight"),
        ({"teacher": "", "teacher_model": "tiny"}, "config.distill.teacher_model"),
    ],
)
def test_config_errors_name_the_field(teacher_dir, changes, field):
    changes = dict(changes)
    config = distill_config(str(changes.pop("teacher", teacher_dir)))
    if "teacher_model" in changes:
        config.distill.teacher_model = changes.pop("teacher_model")
    if "distill_weight" in changes:
        config.distill.weight = changes.pop("distill_weight")
    for k, v in changes.items():
        config[k] = v
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
        validate_config(config)


def test_teacher_must_take_the_students_inputs(tmp_path):
    from clip_jax.train.loop import train
    from clip_jax.weights.params_io import save_params

    cfg = TEACHER_CFG.replace(vision=dataclasses.replace(TEACHER_CFG.vision, image_size=64))
    save_params(tmp_path / "teacher", random_params(CLIP(cfg)), cfg)
    with pytest.raises(ValueError, match="config.distill.teacher=.*image size 64 but config.model has 32"):
        train(distill_config(str(tmp_path / "teacher")), str(tmp_path / "run"))


def test_two_step_run_distils_from_a_saved_teacher(teacher_dir, tmp_path, monkeypatch):
    from clip_jax.train import loop
    from clip_jax.weights.params_io import load_params

    loaded = []
    real_load = loop.load_teacher
    monkeypatch.setattr(loop, "load_teacher", lambda *a: loaded.append(real_load(*a)) or loaded[-1])
    loop.train(distill_config(str(teacher_dir)), str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["distill_loss"] > 0
        np.testing.assert_allclose(r["loss"], r["contrastive_loss"] + WEIGHT * r["distill_loss"], rtol=1e-6)
    # The teacher the run used is, after it, bit for bit the weights it was given.
    (teacher,) = loaded
    _, saved = load_params(teacher_dir)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(teacher.params)), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    assert jnp.dtype(jax.tree.leaves(teacher.params)[0].dtype) == jnp.float32
