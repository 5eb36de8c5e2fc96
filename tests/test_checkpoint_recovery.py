"""A damaged newest checkpoint is set aside and the run resumes from the previous step, bit-exact; a
background checkpoint write that fails stops the run with one message and leaves the last complete
checkpoint resumable.

One tiny in-process run (6 steps, checkpoints at 2, 4, 6) is the reference; each case copies its
workdir, damages or removes steps, and runs train() again in the same process, so that the resumed
run's final params can be compared bit for bit with the reference's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from clip_jax.checkpoint import CheckpointWriteError
from clip_jax.sharding import dict_key_path
from clip_jax.train.config import default_config
from clip_jax.train.loop import train

STEPS = {"total_steps": 6, "checkpoint_every": 2}


def tiny_config():
    c = default_config()
    settings = {"model": "tiny", "batch_size": 8, "log_every": 1, "lr": 1e-4, "warmup_steps": 1, **STEPS}
    for k, v in settings.items():
        c[k] = v
    return c


def flat_params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    return {dict_key_path(p): np.asarray(v) for p, v in leaves}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} parameters differ, e.g. {differ[:3]}"


def steps_in(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("reference")
    final = flat_params(train(tiny_config(), str(workdir)))
    assert steps_in(workdir) == ["2", "4", "6"]
    return workdir, final


def _largest_data_file(step: Path) -> Path:
    files = [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _garbage(size: int) -> bytes:
    return np.random.default_rng(0).bytes(size)


DAMAGES = {
    "data_file_deleted": lambda step: _largest_data_file(step).unlink(),
    "data_file_truncated": lambda step: (
        f := _largest_data_file(step),
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    ),
    "data_file_overwritten": lambda step: (
        f := _largest_data_file(step),
        f.write_bytes(_garbage(f.stat().st_size)),
    ),
    "state_metadata_garbage": lambda step: (step / "state" / "_METADATA").write_bytes(_garbage(300)),
    "data_position_garbage": lambda step: (step / "data" / "metadata").write_bytes(_garbage(60)),
}
# What the warning names as the part of the step that failed to read.
DAMAGED_PART = {
    "data_file_deleted": "state arrays",
    "data_file_truncated": "state arrays",
    "data_file_overwritten": "state arrays",
    "state_metadata_garbage": "state/_METADATA",
    "data_position_garbage": "data position",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_newest_step_is_set_aside_and_the_previous_one_resumed(reference, tmp_path, caplog, damage):
    ref_dir, ref_final = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    DAMAGES[damage](workdir / "checkpoints" / "6")

    with caplog.at_level(logging.INFO):
        final = flat_params(train(tiny_config(), str(workdir)))

    warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "checkpoint step 6 in" in warnings[0] and "\n" not in warnings[0]
    assert DAMAGED_PART[damage] in warnings[0], warnings[0]
    assert "resumed from step 4" in caplog.text
    # Moved aside whole, never deleted; the step was trained again and saved anew.
    aside = [n for n in steps_in(workdir) if n.startswith("6.damaged-")]
    assert len(aside) == 1, steps_in(workdir)
    assert (workdir / "checkpoints" / aside[0] / "state").is_dir()
    assert {"4", "6"} <= set(steps_in(workdir))
    assert_bitwise_equal(final, ref_final)


def test_every_damaged_step_is_set_aside_until_one_restores(reference, tmp_path, caplog):
    ref_dir, ref_final = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    DAMAGES["data_file_deleted"](workdir / "checkpoints" / "6")
    DAMAGES["state_metadata_garbage"](workdir / "checkpoints" / "4")

    with caplog.at_level(logging.INFO):
        final = flat_params(train(tiny_config(), str(workdir)))

    assert "resumed from step 2" in caplog.text
    assert sum("does not restore" in r.getMessage() for r in caplog.records) == 2
    assert_bitwise_equal(final, ref_final)


def _fail_writes_of_step(monkeypatch, step: int) -> list[str]:
    """Make orbax's background finalisation of `step` fail as a full disk would (the step's temporary
    folder is never renamed into place); the other steps save normally."""
    from orbax.checkpoint._src.path import atomicity

    failed = []
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def failing_finalize(self, *args, **kwargs):
        if Path(str(self.get_final())).name == str(step):
            failed.append(str(self.get_final()))
            raise OSError(28, "No space left on device", str(self.get()))
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", failing_finalize)
    return failed


def test_failed_checkpoint_write_stops_the_run_and_the_last_checkpoint_resumes(
    reference, tmp_path, monkeypatch
):
    ref_dir, ref_final = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    for step in ("4", "6"):
        shutil.rmtree(workdir / "checkpoints" / step)

    failed = _fail_writes_of_step(monkeypatch, 4)
    with pytest.raises(CheckpointWriteError) as info:
        train(tiny_config(), str(workdir))
    assert failed, "the injected failure never ran"
    message = str(info.value)
    assert "\n" not in message
    assert "step 4" in message and str(workdir / "checkpoints") in message
    assert "No space left on device" in message and "step 2" in message
    assert not any(n.split(".")[0] in ("4", "6") and n.isdigit() for n in steps_in(workdir))

    monkeypatch.undo()
    final = flat_params(train(tiny_config(), str(workdir)))
    assert_bitwise_equal(final, ref_final)
