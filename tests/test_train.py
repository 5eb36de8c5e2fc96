"""The trainer end to end on one device: CLI runs killed, preempted and resumed, NaN stops, config
errors, metrics files, LiT freezing and gradient accumulation.

CLI runs go through tests/multidevice/train_cli.py (the real `clip_jax.train` flags and main, plus
delays and fault injection) in subprocesses that share a persistent compilation cache, so only the
first run of a config pays for XLA compiles. 8-device and multi-process runs are in
tests/test_train_multidevice.py.
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
from clip_jax.sharding import dict_key_path

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tests" / "multidevice" / "train_cli.py"
TOTAL_STEPS = 6
CHECKPOINT_EVERY = 2
BASE_FLAGS = [
    "--config=configs/default.py",
    "--config.model=tiny",
    "--config.batch_size=16",
    f"--config.total_steps={TOTAL_STEPS}",
    f"--config.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.log_every=1",
    "--config.lr=1e-4",
    "--config.warmup_steps=1",
]
RUN_TIMEOUT = 400  # seconds; a cold compile on a loaded 2-core machine takes a minute or two


def base_config():
    """The config BASE_FLAGS give, for in-process runs."""
    c = default_config()
    c.model = "tiny"
    c.batch_size = 16
    c.total_steps = TOTAL_STEPS
    c.checkpoint_every = CHECKPOINT_EVERY
    c.log_every = 1
    c.lr = 1e-4
    c.warmup_steps = 1
    return c


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    return env


def start_cli(workdir: Path, env: dict, *flags: str, **hooks: str) -> subprocess.Popen:
    """Start the CLI on workdir; its output goes to a numbered log file there (a pipe nobody reads
    while the test polls would fill up and stall the run)."""
    env = dict(env, **{f"CLIP_JAX_TEST_{k.upper()}": str(v) for k, v in hooks.items()})
    cmd = [sys.executable, str(CLI), *BASE_FLAGS, f"--workdir={workdir}", *flags]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"cli_{len(list(workdir.glob('cli_*.log')))}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    proc.log = log
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


def run_cli(workdir: Path, env: dict, *flags: str, **hooks: str) -> tuple[int, str]:
    return finish(start_cli(workdir, env, *flags, **hooks))


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


def logged_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def host_params(params) -> dict[str, np.ndarray]:
    return {dict_key_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} parameters differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cli_env) -> Path:
    """An uninterrupted CLI run of TOTAL_STEPS steps: the run every interrupted one must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    rc, out = run_cli(workdir, cli_env)
    assert rc == 0, out[-4000:]
    return workdir


def test_run_writes_metrics_config_and_tensorboard(reference):
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
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
    proc = start_cli(tmp_path, cli_env, batch_delay=1.0)
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
    proc = start_cli(tmp_path, cli_env, batch_delay=3.0)
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


def test_sigterm_during_a_checkpoint_step_exits_cleanly(cli_env, tmp_path):
    # The signal arrives while step 4 (a periodic checkpoint step) runs: its periodic save and the
    # preemption save are for the same step.
    rc, out = run_cli(tmp_path, cli_env, sigterm_at=3)
    assert rc == 0, out[-4000:]
    assert logged_steps(tmp_path)[-1] == 4
    assert checkpoint_steps(tmp_path)[-1] == 4


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cli_env, tmp_path):
    rc, out = run_cli(tmp_path, cli_env, nan_from=2)  # the batch of step 3 is NaN
    assert rc != 0
    assert "FloatingPointError" in out and "at step 3" in out, out[-4000:]
    assert checkpoint_steps(tmp_path) == [2]


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


def test_config_typo_on_the_command_line_names_the_field(cli_env, tmp_path):
    rc, out = run_cli(tmp_path, cli_env, "--config.lrr=1")
    assert rc != 0
    assert "lrr" in out, out[-4000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lrr", 1.0, "config.lrr"),
        ("loss", "softmaxx", "config.loss"),
        ("model", "ViT-Q-99", "model .ViT-Q-99."),
        ("accum_steps", 3, "config.accum_steps"),
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


def train_in_process(tmp_path: Path, **overrides) -> dict[str, np.ndarray]:
    from clip_jax.train import train

    config = base_config()
    for k, v in overrides.items():
        config[k] = v
    state = train(config, str(tmp_path), devices=jax.devices()[:1])
    return host_params(state.params)


@pytest.mark.parametrize(
    "overrides, frozen, trained",
    [
        ({"freeze": ("^visual/",)}, "visual/", "text/"),  # LiT: locked image tower
        ({"lr_mults": (("^text/", 0.0),)}, "text/", "visual/"),
    ],
    ids=["freeze", "lr_mults"],
)
def test_frozen_tower_is_bitwise_unchanged(reference, tmp_path, overrides, frozen, trained):
    # Step 1 has lr 0 (warmup), so 2 steps make one real update.
    params = train_in_process(tmp_path, total_steps=2, **overrides)
    initial = load_params(reference / "initial_params.npz")
    assert params.keys() == initial.keys()
    frozen_keys = [k for k in params if k.startswith(frozen)]
    trained_keys = [k for k in params if k.startswith(trained)]
    assert frozen_keys and trained_keys
    assert_bitwise_equal({k: params[k] for k in frozen_keys}, {k: initial[k] for k in frozen_keys})
    unchanged = [k for k in trained_keys if np.array_equal(params[k], initial[k])]
    assert not unchanged, unchanged
    assert params["logit_scale"] != initial["logit_scale"]


def test_gradient_accumulation_matches_the_full_batch(reference, tmp_path):
    params = train_in_process(tmp_path, accum_steps=4)
    expected = load_params(reference / "final_params.npz")
    worst = max(float(np.max(np.abs(params[k] - expected[k]))) for k in expected)
    assert worst < 1e-5
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(line)["loss"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
