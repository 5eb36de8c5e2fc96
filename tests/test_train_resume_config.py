"""Resuming a run with another config, checked before anything in the workdir is written; batch sizes
that cannot split over the devices refused at start; prefetch errors end the run; relative paths.

One tiny in-process run (2 steps, a checkpoint at step 2) is shared; each case copies its workdir.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_jax.cli_errors import UserError
from clip_jax.train.config import check_batch_fits_devices, default_config
from clip_jax.train.loop import train
from clip_jax.train.prefetch import Prefetcher
from clip_jax.train.resume_config import HISTORY_FILE, check_resume_config

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**changes):
    c = default_config()
    settings = {
        "model": "tiny",
        "batch_size": 8,
        "total_steps": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "lr": 1e-4,
        "warmup_steps": 1,
        **changes,
    }
    for k, v in settings.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(), str(workdir))
    return workdir


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file of the workdir outside its tensorboard folder, by relative path."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def copy_of(trained: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    return workdir


def test_another_model_is_refused_naming_the_fields_before_anything_is_written(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = tiny_config()
    with config.ignore_type():
        config.model = {"base": "tiny", "embed_dim": 32}
    with pytest.raises(UserError) as info:
        train(config, str(workdir))
    message = str(info.value)
    assert "config.model.embed_dim: 64 -> 32" in message and "\n" not in message
    assert snapshot(workdir) == before


def test_a_state_layout_change_is_refused_not_taken_for_damage(trained, tmp_path):
    """Freezing changes the optimizer state's layout, not the model: the checkpoint's shapes refuse it,
    naming the changed field, and no step is moved aside as damaged."""
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    with pytest.raises(
        ValueError, match=r"does not fit this run's config.*config\.freeze: \[\] -> \["
    ) as info:
        train(tiny_config(freeze=("^visual/",)), str(workdir))
    assert "\n" not in str(info.value)
    assert snapshot(workdir) == before


def test_strict_resume_refuses_changed_hyperparameters_naming_each(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = tiny_config(lr=2e-4, weight_decay=0.1, strict_resume=True, total_steps=3)
    with pytest.raises(UserError) as info:
        train(config, str(workdir))
    message = str(info.value)
    for change in (
        "config.lr: 0.0001 -> 0.0002",
        "config.weight_decay: 0.2 -> 0.1",
        "config.total_steps: 2 -> 3",
    ):
        assert change in message, message
    assert "config.strict_resume: false" not in message  # a change of it is not a training change
    assert snapshot(workdir) == before


def test_changed_hyperparameters_are_logged_and_kept_in_the_history(trained, tmp_path, monkeypatch, caplog):
    """Also a relative --workdir, resumed."""
    copy_of(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        state = train(tiny_config(lr=2e-4, total_steps=3, log_every=3), "run")
    assert int(state.step) == 3
    assert "resumed from step 2" in caplog.text
    assert "config.lr: 0.0001 -> 0.0002" in caplog.text and "config.total_steps: 2 -> 3" in caplog.text
    history = [json.loads(line) for line in (tmp_path / "run" / HISTORY_FILE).read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 2]
    assert history[1]["changes"]["config.lr"] == {"old": 1e-4, "new": 2e-4}
    assert set(history[1]["changes"]) == {"config.lr", "config.total_steps", "config.log_every"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 2e-4


def test_check_resume_config_without_a_checkpoint_refuses_nothing(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config().to_json_best_effort())
    changes = check_resume_config(tiny_config(model="ViT-B-32", strict_resume=True), str(tmp_path), False)
    assert "config.model.embed_dim" in changes.model


def test_strict_resume_lets_operational_fields_change(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config().to_json_best_effort())
    config = tiny_config(log_every=5, keep_checkpoints=1, strict_resume=True)
    config.mesh.fsdp = 2
    changes = check_resume_config(config, str(tmp_path), resuming=True)
    assert set(changes.changes) == {
        "config.log_every",
        "config.keep_checkpoints",
        "config.strict_resume",
        "config.mesh.fsdp",
    }
    assert changes.training == {}
    config.seed = 1
    with pytest.raises(UserError, match=r"config\.seed: 0 -> 1"):
        check_resume_config(config, str(tmp_path), resuming=True)


def test_relative_and_absolute_paths_restore_the_same_params(trained, monkeypatch):
    from clip_jax.checkpoint import restore_params

    absolute, step_dir = restore_params(trained)
    monkeypatch.chdir(trained.parent)
    for relative in ("run", "run/checkpoints", f"run/checkpoints/{step_dir.name}"):
        params, _ = restore_params(relative)
        flat = lambda t: {k: np.asarray(v) for k, v in _flat(t).items()}  # noqa: E731
        a, b = flat(absolute), flat(params)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), relative


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_init_from_a_relative_training_run(trained, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(trained.parent)
    with caplog.at_level(logging.INFO):
        train(tiny_config(init_from="run", total_steps=1), str(tmp_path / "finetune"))
    assert f"init_from: params of {trained}/checkpoints/2" in caplog.text


def test_batch_that_does_not_split_over_the_devices_is_named():
    config = tiny_config(batch_size=30)
    with pytest.raises(ValueError, match=r"config\.batch_size=30 .* 4 batch devices .* multiple of 4"):
        check_batch_fits_devices(config, 4)
    check_batch_fits_devices(tiny_config(batch_size=32), 4)
    config = tiny_config(batch_size=16, accum_steps=4)
    with pytest.raises(ValueError, match=r"config\.batch_size=16 .*4 micro-batches .* 8 batch devices"):
        check_batch_fits_devices(config, 8)


def test_batch_of_30_on_4_devices_is_refused_before_the_workdir_is_made(tmp_path):
    """The issue's case, in its own process with 4 simulated devices (it used to hang)."""
    workdir = tmp_path / "run"
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_train_resume_config import tiny_config; "
        "from clip_jax.train.loop import train; "
        f"train(tiny_config(batch_size=30, total_steps=1), {str(workdir)!r})"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "config.batch_size=30 does not split over 4 batch devices" in proc.stderr, proc.stderr[-3000:]
    assert not workdir.exists()


class _Source:
    """Batches 0, 1, ... that raise `error` at position `fail_at`."""

    def __init__(self, fail_at: int, error: BaseException) -> None:
        self.position, self.fail_at, self.error = 0, fail_at, error

    def __next__(self):
        if self.position == self.fail_at:
            raise self.error
        self.position += 1
        return self.position - 1

    def get_state(self):
        return {"position": self.position}


def test_prefetch_thread_errors_reach_the_consumer_in_order():
    feed = Prefetcher(_Source(2, ValueError("shard 7 is unreadable")), size=1)
    try:
        assert [next(feed), next(feed)] == [0, 1]
        with pytest.raises(ValueError, match="shard 7 is unreadable"):
            next(feed)
        assert feed.get_state() == {"position": 2}
    finally:
        feed.close()


def test_an_error_in_the_prefetch_thread_ends_the_training_run(tmp_path, monkeypatch):
    import clip_jax.train.loop as loop

    def place_fails(*args, **kwargs):
        raise ValueError("cannot place the batch on the mesh")

    class Batches:
        prefetch = True

        def __init__(self):
            self.position = 0

        def __next__(self):
            self.position += 1
            return {"image": np.zeros((8, 32, 32, 3), np.float32), "text": np.zeros((8, 77), np.int32)}

        def get_state(self):
            return {"position": self.position}

        def set_state(self, state):
            self.position = state["position"]

    monkeypatch.setattr(loop, "make_train_data", lambda config, model_cfg: Batches())
    monkeypatch.setattr(loop.jax, "make_array_from_process_local_data", place_fails)
    with pytest.raises(ValueError, match="cannot place the batch on the mesh"):
        train(tiny_config(total_steps=1), str(tmp_path / "run"))


def test_a_field_added_to_the_schema_since_the_run_is_no_change_at_its_default(tmp_path):
    """A config.json written before a field existed (here: ema_decay) resumes under strict_resume while the
    field keeps its default; set to another value, it is a change like any other."""
    saved = json.loads(tiny_config().to_json_best_effort())
    del saved["ema_decay"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_resume_config(tiny_config(strict_resume=True), str(tmp_path), resuming=True).training == {}
    with pytest.raises(UserError, match=r"config\.ema_decay: null -> 0\.5"):
        check_resume_config(tiny_config(strict_resume=True, ema_decay=0.5), str(tmp_path), resuming=True)
