"""The trainer end to end on one device: CLI runs killed, preempted and resumed, NaN stops, config
errors, metrics files, LiT freezing and gradient accumulation.

Training runs go through tests/multidevice/train_cli.py (the real `clip_jax.train` flags and main,
plus delays and fault injection, and a dump of the initial and final params) in subprocesses that
share a persistent compilation cache, so only the first run of a config pays for XLA compiles.
Runs that need no signals from the test start in the background and share the 2 cores with the
others. 8-device and multi-process runs are in tests/test_train_multidevice.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from clip_jax.config_utils import default_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tests" / "multidevice" / "train_cli.py"
TOTAL_STEPS = 6
CHECKPOINT_EVERY = 2
BASE = {
    "model": "tiny",
    "batch_size": 16,
    "total_steps": TOTAL_STEPS,
    "checkpoint_every": CHECKPOINT_EVERY,
    "log_every": 1,
    "lr": 1e-4,
    "warmup_steps": 1,
}
RUN_TIMEOUT = 600  # seconds; cold compiles of several runs at once on a loaded 2-core machine


def base_config():
    """The config the CLI runs use, for in-process checks."""
    c = default_config()
    for k, v in BASE.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # The tests compare runs with each other, never with XLA's optimised code; -O0 halves compiles.
        XLA_FLAGS="--xla_backend_optimization_level=0",
    )
    return env


def start_cli(
    workdir: Path, env: dict, *extra_flags: str, hooks: dict | None = None, **config
) -> subprocess.Popen:
    """`train_cli.py --config=configs/default.py --workdir=W --config.K=V ...` with BASE overridden by
    `config`; hooks become CLIP_JAX_TEST_* variables. Output goes to a numbered log file in workdir
    (a pipe nobody reads while the test polls would fill up and stall the run)."""
    env = dict(env, **{f"CLIP_JAX_TEST_{k.upper()}": str(v) for k, v in (hooks or {}).items()})
    overrides = [f"--config.{k}={v}" for k, v in {**BASE, **config}.items()]
    cmd = [
        sys.executable,
        str(CLI),
        "--config=configs/default.py",
        f"--workdir={workdir}",
        *overrides,
        *extra_flags,
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"cli_{len(list(workdir.glob('cli_*.log')))}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    proc.log, proc.workdir = log, workdir
    return proc


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """Wait for proc; its return code and output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"run timed out after {timeout} s:\n{proc.log.read_text()[-4000:]}")
    return proc.returncode, proc.log.read_text()


def run_cli(
    workdir: Path, env: dict, *extra_flags: str, hooks: dict | None = None, **config
) -> tuple[int, str]:
    return finish(start_cli(workdir, env, *extra_flags, hooks=hooks, **config))


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = RUN_TIMEOUT) -> None:
    """Poll until condition() holds; fail (killing proc) if proc ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}:\n{proc.log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def checkpoint_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def logged_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in metrics(workdir)]


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} parameters differ, e.g. {differ[:3]}"


# Runs whose outcome the tests only inspect, by name: (config overrides, hooks).
BACKGROUND = {
    # LiT: the image tower locked by freezing, or the text tower by a zero lr multiplier. Step 1 has
    # lr 0 (warmup), so 2 steps make one real update.
    "freeze": ({"total_steps": 2, "freeze": "('^visual/',)"}, {}),
    "lr_mults": ({"total_steps": 2, "lr_mults": "(('^text/', 0.0),)"}, {}),
    "accum": ({"accum_steps": 4}, {}),
    # Started once the reference has filled the compilation cache, since they share its step.
    "nan": ({}, {"nan_from": 2}),  # the batch of step 3 is NaN
    # SIGTERM while step 4, a periodic checkpoint step, runs: its periodic save and the preemption
    # save are for the same step.
    "sigterm_on_checkpoint_step": ({}, {"sigterm_at": 3}),
}
AFTER_REFERENCE = ("nan", "sigterm_on_checkpoint_step")


class Runs:
    """The reference run (an uninterrupted CLI run every interrupted one must reproduce) and the
    BACKGROUND runs, started around it so that they overlap."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env, self.procs = base, env, {}
        self.reference = base / "reference"

    def start(self, name: str) -> None:
        config, hooks = BACKGROUND[name]
        self.procs[name] = start_cli(self.base / name, self.env, hooks=hooks, **config)

    def result(self, name: str) -> tuple[int, str, Path]:
        proc = self.procs[name]
        return (*finish(proc), proc.workdir)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_env):
    runs = Runs(tmp_path_factory.mktemp("runs"), cli_env)
    try:
        for name in BACKGROUND:
            if name not in AFTER_REFERENCE:
                runs.start(name)
        rc, out = run_cli(runs.reference, cli_env)
        assert rc == 0, out[-4000:]
        for name in AFTER_REFERENCE:
            runs.start(name)
        yield runs
    finally:
        runs.kill_all()


@pytest.fixture(scope="module")
def reference(runs) -> Path:
    return runs.reference


def test_run_writes_metrics_config_and_tensorboard(reference):
    records = metrics(reference)
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    for r in records:
        for key in ("step", "loss", "learning_rate", "logit_scale", "images_per_sec"):
            assert key in r, (key, r)
        assert np.isfinite(r["loss"]) and r["images_per_sec"] > 0
    # Warmup 1: lr 0 at the first step, the peak at the second, then cosine decay.
    assert records[0]["learning_rate"] == 0.0
    assert records[1]["learning_rate"] == pytest.approx(1e-4)
    resolved = json.loads((reference / "config.json").read_text())
    assert resolved["model"] == "tiny" and resolved["total_steps"] == TOTAL_STEPS
    events = list((reference / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert checkpoint_steps(reference) == [2, 4, 6]
    initial, final = (
        load_params(reference / "initial_params.npz"),
        load_params(reference / "final_params.npz"),
    )
    assert not np.array_equal(initial["visual/proj"], final["visual/proj"])


def test_sigkill_then_resume_equals_uninterrupted_run_bitwise(reference, cli_env, tmp_path):
    proc = start_cli(tmp_path, cli_env, hooks={"batch_delay": 1.0})
    try:
        wait_for(lambda: CHECKPOINT_EVERY in checkpoint_steps(tmp_path), proc, "the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        rc, _ = finish(proc)
    finally:
        proc.kill()
    assert rc == -signal.SIGKILL
    killed_at = max(checkpoint_steps(tmp_path))
    assert killed_at < TOTAL_STEPS and not (tmp_path / "final_params.npz").exists()

    rc, out = run_cli(tmp_path, cli_env)
    assert rc == 0, out[-4000:]
    assert f"resumed from step {killed_at}" in out
    assert_bitwise_equal(
        load_params(tmp_path / "final_params.npz"), load_params(reference / "final_params.npz")
    )
    assert logged_steps(tmp_path)[-1] == TOTAL_STEPS


def test_sigterm_saves_exits_cleanly_and_resume_skips_half_written_checkpoint(reference, cli_env, tmp_path):
    # SIGTERM once step 2 is logged: it lands during step 2's checkpoint save or while the 3rd batch
    # is drawn (each is delayed 3 s), so the run stops after step 2 or 3 with a checkpoint there.
    proc = start_cli(tmp_path, cli_env, hooks={"batch_delay": 3.0})
    try:
        wait_for(lambda: 2 in logged_steps(tmp_path), proc, "step 2")
        proc.send_signal(signal.SIGTERM)
        rc, out = finish(proc)
    finally:
        proc.kill()
    assert rc == 0, out[-4000:]
    stopped_at = logged_steps(tmp_path)[-1]
    assert 2 <= stopped_at < TOTAL_STEPS
    assert checkpoint_steps(tmp_path)[-1] == stopped_at

    # What a kill during an orbax save leaves behind: a temporary directory of a later step.
    tmp_dir = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1700000000000000"
    (tmp_dir / "state").mkdir(parents=True)
    (tmp_dir / "state" / "partial").write_bytes(b"\0" * 100)

    rc, out = run_cli(tmp_path, cli_env)
    assert rc == 0, out[-4000:]
    assert f"resumed from step {stopped_at}" in out
    assert logged_steps(tmp_path) == list(range(1, TOTAL_STEPS + 1))
    assert_bitwise_equal(
        load_params(tmp_path / "final_params.npz"), load_params(reference / "final_params.npz")
    )


def test_sigterm_during_a_checkpoint_step_exits_cleanly(runs):
    rc, out, workdir = runs.result("sigterm_on_checkpoint_step")
    assert rc == 0, out[-4000:]
    assert logged_steps(workdir)[-1] == 4
    assert checkpoint_steps(workdir)[-1] == 4


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(runs):
    rc, out, workdir = runs.result("nan")
    assert rc != 0
    assert "FloatingPointError" in out and "at step 3" in out, out[-4000:]
    assert checkpoint_steps(workdir) == [2]


def test_step_directory_without_metadata_is_not_taken_as_latest(reference, tmp_path):
    from clip_jax.checkpoint import Checkpointer

    directory = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", directory)
    (directory / "8" / "state").mkdir(parents=True)  # a step directory whose contents never arrived
    ckpt = Checkpointer(directory)
    try:
        assert ckpt.latest_step() == TOTAL_STEPS
    finally:
        ckpt.close()


@pytest.mark.parametrize(
    "name, frozen, trained", [("freeze", "visual/", "text/"), ("lr_mults", "text/", "visual/")]
)
def test_frozen_tower_is_bitwise_unchanged(runs, name, frozen, trained):
    rc, out, workdir = runs.result(name)
    assert rc == 0, out[-4000:]
    initial, final = load_params(workdir / "initial_params.npz"), load_params(workdir / "final_params.npz")
    frozen_keys = [k for k in final if k.startswith(frozen)]
    trained_keys = [k for k in final if k.startswith(trained)]
    assert frozen_keys and trained_keys
    assert_bitwise_equal({k: final[k] for k in frozen_keys}, {k: initial[k] for k in frozen_keys})
    unchanged = [k for k in trained_keys if np.array_equal(final[k], initial[k])]
    assert not unchanged, unchanged
    assert final["logit_scale"] != initial["logit_scale"]


def test_gradient_accumulation_matches_the_full_batch(runs):
    rc, out, workdir = runs.result("accum")
    assert rc == 0, out[-4000:]
    params, expected = (
        load_params(workdir / "final_params.npz"),
        load_params(runs.reference / "final_params.npz"),
    )
    worst = max(float(np.max(np.abs(params[k] - expected[k]))) for k in expected)
    assert worst < 1e-5
    losses, ref_losses = [r["loss"] for r in metrics(workdir)], [r["loss"] for r in metrics(runs.reference)]
    assert len(losses) == TOTAL_STEPS
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_config_typo_on_the_command_line_names_the_field(cli_env, tmp_path):
    rc, out = run_cli(tmp_path, cli_env, "--config.lrr=1")
    assert rc != 0
    assert "lrr" in out, out[-4000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lrr", 1.0, r"config\.lrr"),
        ("loss", "softmaxx", r"config\.loss"),
        ("model", "ViT-Q-99", "model 'ViT-Q-99'"),
        ("accum_steps", 3, r"config\.accum_steps"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    config = base_config()
    config[field] = value  # an unlocked ConfigDict accepts new fields, as a config file could write them
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_mesh_that_does_not_divide_the_devices_fails_at_start(tmp_path):
    from clip_jax.train import train

    config = base_config()
    config.mesh.data = 3
    with pytest.raises(ValueError, match=r"config\.mesh"):
        train(config, str(tmp_path), devices=jax.devices()[:1])
    assert not (tmp_path / "checkpoints").exists()
