"""Cooldown branches (config.branch_from): a new workdir continued from a checkpoint of a constant-lr run
trains exactly as the parent would have gone on (bitwise, same batches), under its own schedule, and the
parent's workdir is never written. Tiny in-process runs on random batches (each batch is set by its
position, so a wrong data position changes the losses)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from clip_jax.train.config import default_config, validate_config
from clip_jax.train.loop import train

LR, WARMUP, PARENT_STEPS = 1e-3, 1, 4


def tiny_config(**changes):
    c = default_config()
    settings = {
        "model": "tiny",
        "batch_size": 8,
        "total_steps": PARENT_STEPS,
        "checkpoint_every": 2,
        "log_every": 1,
        "lr": LR,
        "warmup_steps": WARMUP,
        "schedule": "const",
        "report_to": (),
        **changes,
    }
    for k, v in settings.items():
        c[k] = v
    return c


def snapshot(workdir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the workdir with its modification time: what a write would change."""
    return {
        str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


def metrics(workdir: Path) -> dict[int, dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def host(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A constant-lr run of PARENT_STEPS steps with checkpoints at 2 and 4, and its final params."""
    workdir = tmp_path_factory.mktemp("parent") / "run"
    state = train(tiny_config(), str(workdir))
    return workdir, host(state.params)


def test_branch_without_cooldown_continues_the_parent_bitwise(parent, tmp_path):
    workdir, final_params = parent
    before = snapshot(workdir)
    branch = tmp_path / "branch"
    state = train(tiny_config(branch_from=str(workdir / "checkpoints" / "2")), str(branch))
    # The parent's steps 3 and 4, taken again from its step-2 checkpoint: same state, same batches.
    for ours, theirs in zip(host(state.params), final_params, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    got, want = metrics(branch), metrics(workdir)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert (
            got[step]["loss"] == want[step]["loss"]
            and got[step]["learning_rate"] == want[step]["learning_rate"]
        )
    assert snapshot(workdir) == before  # the parent is only read


def test_cooldown_branch_follows_open_clips_const_lr_cooldown_from_the_branch_point(parent, tmp_path):
    from open_clip_train.scheduler import const_lr_cooldown

    workdir, _ = parent
    before = snapshot(workdir)
    total, cooldown = 7, 3
    branch = tmp_path / "branch"
    config = tiny_config(
        branch_from=str(workdir), schedule="const-cooldown", total_steps=total, cooldown_steps=cooldown
    )
    train(config, str(branch))

    class Optimizer:
        param_groups = [{}]

    opt = Optimizer()
    adjust = const_lr_cooldown(opt, LR, WARMUP, total, cooldown)
    logged = metrics(branch)
    assert sorted(logged) == [5, 6, 7]  # from the parent's newest step, 4, to the branch's end
    for step in logged:
        adjust(step - 1)  # the metrics' step counts steps done; the lr is that of the step taken
        assert logged[step]["learning_rate"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    assert [logged[s]["learning_rate"] for s in (6, 7)] == sorted(logged[s]["learning_rate"] for s in (6, 7))[
        ::-1
    ]
    assert (branch / "checkpoints" / str(total)).is_dir() and snapshot(workdir) == before


def test_branch_point_must_fit_the_branch(parent, tmp_path):
    workdir, _ = parent
    step2 = str(workdir / "checkpoints" / "2")
    cases = [
        (
            {"branch_from": str(tmp_path / "nothing")},
            r"config\.branch_from='.*nothing' holds no complete checkpoint",
        ),
        (
            {"branch_from": step2, "total_steps": 2},
            r"config\.total_steps=2 must be beyond the branch point, step 2",
        ),
        (
            {"branch_from": step2, "schedule": "const-cooldown", "total_steps": 6, "cooldown_steps": 5},
            r"config\.cooldown_steps=5 would start the cooldown at step 1, before the branch point .* at most 4",
        ),
        (
            {"branch_from": step2, "init_from": step2},
            r"config\.init_from and config\.branch_from are both set",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_config(tiny_config(**changes))
    before = snapshot(workdir)
    with pytest.raises(ValueError, match=r"config\.branch_from=.* is this run's --workdir"):
        train(tiny_config(branch_from=step2, total_steps=6), str(workdir))
    assert snapshot(workdir) == before
