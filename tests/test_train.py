"""The trainer end to end on one device: CLI runs killed, preempted and resumed, non-finite stops, config
errors, metrics files, and every training option (LiT freezing, lr multipliers, gradient accumulation,
sigmoid loss, scan, remat policies, bf16, patch dropout, gradient clipping) through the real CLI.

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
from adam_bounds import adam_drift_bound

from clip_jax.train.config import default_config, validate_config

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
    workdir: Path,
    env: dict,
    *extra_flags: str,
    hooks: dict | None = None,
    config_file: str = "configs/default.py:data=random",
    **config,
) -> subprocess.Popen:
    """`train_cli.py --config=CONFIG_FILE --workdir=W --config.K=V ...` with BASE overridden by `config`
    (a value of None drops the field); hooks become CLIP_JAX_TEST_* variables. Output goes to a numbered
    log file in workdir (a pipe nobody reads while the test polls would fill up and stall the run)."""
    env = dict(env, **{f"CLIP_JAX_TEST_{k.upper()}": str(v) for k, v in (hooks or {}).items()})
    overrides = [f"--config.{k}={v}" for k, v in {**BASE, **config}.items() if v is not None]
    cmd = [
        sys.executable,
        str(CLI),
        f"--config={config_file}",
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


def unstacked(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned layers' stacked 'resblocks/...' entries as the unrolled 'resblocks_{i}/...' ones."""
    out = {}
    for k, v in params.items():
        if "/resblocks/" in k:
            for i, layer in enumerate(v):
                out[k.replace("/resblocks/", f"/resblocks_{i}/")] = layer
        else:
            out[k] = v
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} parameters differ, e.g. {differ[:3]}"


# The training options, each a few steps fitting one repeated batch (so the loss must fall) at a
# larger lr: (config overrides, config file). "plain" is the run without options they are compared to.
FIT = {"data.distinct_batches": 1, "total_steps": 4, "checkpoint_every": 100, "lr": 1e-3}
OPTIONS = {
    "plain": {},
    "scan": {"scan": True},
    "remat_full": {"remat_policy": "full"},
    "remat_dots": {"remat_policy": "dots"},
    "remat_dots_no_batch": {"remat_policy": "dots_no_batch"},
    "bf16": {"dtype": "bfloat16"},
    "patch_dropout": {"patch_dropout": 0.5},
    "grad_clip_norm": {"grad_clip_norm": 1.0},
    "sigmoid": {"model": None, "loss": None, "_config_file": "tests/multidevice/sigmoid_config.py"},
}

# Runs whose outcome the tests only inspect, by name: (config overrides, hooks).
BACKGROUND = {
    # LiT: the image tower locked by freezing, or the text tower by a zero lr multiplier. Warmup starts
    # at lr * 1/warmup_steps, as open_clip's, so every step updates.
    "freeze": ({"total_steps": 2, "freeze": "('^visual/',)"}, {}),
    "lr_mults": ({"total_steps": 2, "lr_mults": "(('^text/', 0.0),)"}, {}),
    # LiT proper: the image tower taken from the reference run's last checkpoint and locked, the text
    # tower fresh (after the reference, whose checkpoint it reads).
    "lit": (
        {
            "total_steps": 2,
            "init_from": "{reference}",
            "init_from_only": "('^visual/',)",
            "freeze": "('^visual/',)",
        },
        {},
    ),
    "accum": ({"accum_steps": 4}, {}),
    # An lr that overflows float32: the first update makes the parameters infinite.
    "huge_lr": ({"lr": 1e39, "total_steps": 2}, {}),
    **{f"option_{name}": ({**FIT, **o}, {}) for name, o in OPTIONS.items()},
    # Started once the reference has filled the compilation cache, since they share its step.
    "nan": ({}, {"nan_from": 2}),  # the batch of step 3 is NaN
    # SIGTERM while step 4, a periodic checkpoint step, runs: its periodic save and the preemption
    # save are for the same step.
    "sigterm_on_checkpoint_step": ({}, {"sigterm_at": 3}),
}
AFTER_REFERENCE = ("nan", "sigterm_on_checkpoint_step", "lit")


class Runs:
    """The reference run (an uninterrupted CLI run every interrupted one must reproduce) and the
    BACKGROUND runs, started around it so that they overlap."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env, self.procs = base, env, {}
        self.reference = base / "reference"

    def start(self, name: str) -> None:
        config, hooks = BACKGROUND[name]
        config = {
            k: v.format(reference=self.reference) if isinstance(v, str) else v for k, v in config.items()
        }
        config_file = config.pop("_config_file", "configs/default.py:data=random")
        self.procs[name] = start_cli(
            self.base / name, self.env, hooks=hooks, config_file=config_file, **config
        )

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
        for key in ("step", "loss", "learning_rate", "logit_scale"):
            assert key in r, (key, r)
        assert np.isfinite(r["loss"])
        assert r.get("images_per_sec", 1) > 0
    # Throughput is timed between completed steps, never over the first (which compiles) nor across a
    # checkpoint save (every 2 steps here): steps 1-2 have none, the last step of each window has it.
    have_rate = [r["step"] for r in records if "images_per_sec" in r]
    assert have_rate == list(range(2 * CHECKPOINT_EVERY, TOTAL_STEPS + 1, CHECKPOINT_EVERY)), have_rate
    # Warmup 1, as open_clip's cosine_lr: lr * (0 + 1) / 1 at the first step, the peak at the second
    # (the cosine's start), then decay.
    assert records[0]["learning_rate"] == pytest.approx(1e-4)
    assert records[1]["learning_rate"] == pytest.approx(1e-4)
    assert records[2]["learning_rate"] < records[1]["learning_rate"]
    assert all(r["nonfinite"] == 0 for r in records)
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


def test_the_model_at_initialisation_is_the_one_training_starts_from(reference):
    """What the main job's "at init" column evaluates (clip_jax.models.init_params with the trainer's
    init_rngs) is the trainer's initial model. Both are the same jitted random draws; only XLA's
    optimisation level differs (FMA contraction in the inverse-erf polynomial), so the values agree to
    float32 rounding, 1e-5 relative, while another key gives other values altogether."""
    from clip_jax.models import CLIP, init_params
    from clip_jax.sharding import dict_key_path
    from clip_jax.train.config import resolve_model_config
    from clip_jax.train.step import init_rngs

    model = CLIP(resolve_model_config(BASE["model"]))
    params = init_params(model, init_rngs(default_config().seed)[0])
    ours = {dict_key_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    trainer = load_params(reference / "initial_params.npz")
    assert ours.keys() == trainer.keys()
    for k in ours:
        np.testing.assert_allclose(ours[k], trainer[k], rtol=1e-5, atol=1e-6, err_msg=k)


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


def test_nan_loss_stops_the_run_and_resumes_from_the_last_good_checkpoint(runs, cli_env):
    rc, out, workdir = runs.result("nan")
    assert rc != 0
    assert (
        "clip_jax.train: error: non-finite loss and gradient norm and updated parameters at step 3" in out
    ), out[-4000:]
    # Step 4 was already running when step 3 was checked, but its checkpoint was never written.
    assert checkpoint_steps(workdir) == [2]
    # The kept checkpoint is the reference run's step 2: resumed without the poisoned batch, the run
    # ends where the uninterrupted one does.
    rc, out = run_cli(workdir, cli_env)
    assert rc == 0, out[-4000:]
    assert "resumed from step 2" in out
    assert_bitwise_equal(
        load_params(workdir / "final_params.npz"), load_params(runs.reference / "final_params.npz")
    )


def test_non_finite_parameters_stop_the_run_before_any_checkpoint(runs):
    rc, out, workdir = runs.result("huge_lr")
    assert rc != 0
    # The loss and gradients of step 1 come from the initial parameters and are finite.
    assert "clip_jax.train: error: non-finite updated parameters at step 1" in out, out[-4000:]
    assert "no checkpoint saved yet" in out and "step None" not in out
    assert checkpoint_steps(workdir) == []


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


def test_lit_takes_the_image_tower_from_a_run_and_the_text_tower_fresh(runs):
    rc, out, workdir = runs.result("lit")
    assert rc == 0, out[-4000:]
    reference_final = load_params(runs.reference / "final_params.npz")  # = its last checkpoint
    reference_initial = load_params(runs.reference / "initial_params.npz")  # same seed: the fresh init
    initial, final = load_params(workdir / "initial_params.npz"), load_params(workdir / "final_params.npz")
    visual = [k for k in initial if k.startswith("visual/")]
    rest = [k for k in initial if not k.startswith("visual/")]
    assert visual and rest
    assert_bitwise_equal({k: initial[k] for k in visual}, {k: reference_final[k] for k in visual})
    assert_bitwise_equal({k: final[k] for k in visual}, {k: reference_final[k] for k in visual})  # locked
    assert_bitwise_equal({k: initial[k] for k in rest}, {k: reference_initial[k] for k in rest})
    assert not [k for k in rest if k.startswith("text/") and np.array_equal(final[k], initial[k])]


def test_init_from_only_without_init_from_is_an_error():
    from clip_jax.train.config import default_config, validate_config

    config = default_config()
    config.init_from_only = ("^visual/",)
    with pytest.raises(ValueError, match="config.init_from_only"):
        validate_config(config)


def test_gradient_accumulation_through_the_trainer_matches_the_full_batch(runs):
    """The accumulated gradients themselves are compared in tests/test_train_step.py; here the trainer's
    accum_steps reaches them: same loss and gradient norm (a sum-instead-of-mean bug scales it by 4) at
    step 1, from the same parameters. Later steps start from parameters that Adam made differ by float
    noise: the final parameters are held to the bound on that drift."""
    rc, out, workdir = runs.result("accum")
    assert rc == 0, out[-4000:]
    got, want = metrics(workdir), metrics(runs.reference)
    assert len(got) == TOTAL_STEPS
    for key in ("loss", "grad_norm"):
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-5), key
    assert_within_adam_drift(workdir, runs.reference, TOTAL_STEPS, BASE["lr"])


def assert_within_adam_drift(got: Path, want: Path, steps: int, lr: float) -> None:
    a, b = (unstacked(load_params(d / "final_params.npz")) for d in (got, want))
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in b)
    assert worst <= adam_drift_bound(steps, lr), worst


def option_metrics(runs, name: str) -> list[dict]:
    rc, out, workdir = runs.result(f"option_{name}")
    assert rc == 0, out[-4000:]
    records = metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, FIT["total_steps"] + 1))
    return records


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_training_option_runs_and_fits_a_batch(runs, name):
    records = option_metrics(runs, name)
    losses = [r["loss"] for r in records]
    assert all(np.isfinite(losses)) and all(r["nonfinite"] == 0 for r in records)
    # One repeated batch: the loss must fall. It falls by 0.5 to 5 in these runs, and float differences
    # between machines move it by ~1e-5, so a fall of 0.1 is a margin, not a reading.
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("name", ["scan", "remat_full", "remat_dots", "remat_dots_no_batch"])
def test_layout_options_train_the_same_model(runs, name):
    """scan (it starts from the unrolled model's initial values, stacked) and every remat policy compute
    the same loss and gradients as the plain run: at step 1, from the same parameters, up to float
    rounding of reordered sums (1e-5 relative); the final parameters within the drift Adam can make of
    that noise."""
    got, want = option_metrics(runs, name), option_metrics(runs, "plain")
    for key in ("loss", "grad_norm"):
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-5), key
    assert_within_adam_drift(
        runs.base / f"option_{name}", runs.base / "option_plain", FIT["total_steps"], FIT["lr"]
    )


def test_options_that_change_the_step_differ_from_plain_at_step_1(runs):
    """Each option reaches the step: gradient clipping leaves the logged (pre-clip) norm of step 1 and
    changes the updates; bf16 changes the step-1 loss by bf16 rounding only; the sigmoid loss is another
    function; patch dropout sees other tokens."""
    plain = option_metrics(runs, "plain")
    clip = option_metrics(runs, "grad_clip_norm")
    assert (
        clip[0]["grad_norm"] == pytest.approx(plain[0]["grad_norm"], rel=1e-5) and plain[0]["grad_norm"] > 1
    )
    # Adam is blind to a constant gradient scale, so clipping every step to norm 1 shows only once the
    # unclipped norms of the steps differ: in the Adam moments' mix, by the last step, where the loss
    # moves by several percent; float noise between machines is ~1e-5, so 1e-3 separates the two.
    assert clip[-1]["loss"] != pytest.approx(plain[-1]["loss"], rel=1e-3)
    bf16 = option_metrics(runs, "bf16")
    # bf16 keeps 8 bits: ~2^-8 relative error per rounding, a few dozen roundings deep; the loss moves
    # by far less than its own size but by more than fp32 noise.
    assert bf16[0]["loss"] == pytest.approx(plain[0]["loss"], rel=0.05)
    assert bf16[0]["loss"] != plain[0]["loss"]
    assert option_metrics(runs, "sigmoid")[0]["loss"] != pytest.approx(plain[0]["loss"], rel=0.1)
    assert "logit_bias" in option_metrics(runs, "sigmoid")[0]
    assert option_metrics(runs, "patch_dropout")[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-4)


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
        ("lr", 0.0, r"config\.lr=0\.0 must be > 0"),
        ("weight_decay", -0.1, r"config\.weight_decay"),
        ("b1", 1.0, r"config\.b1"),
        ("b2", 0.0, r"config\.b2"),
        ("eps", 0.0, r"config\.eps"),
        ("warmup_steps", 7, r"config\.warmup_steps=7 must be in \[0, config\.total_steps\]"),
        ("end_lr_ratio", 1.5, r"config\.end_lr_ratio"),
        ("keep_checkpoints", 0, r"config\.keep_checkpoints"),
        ("grad_clip_norm", -1.0, r"config\.grad_clip_norm"),
        ("no_decay", ("(",), r"config\.no_decay has an invalid regex"),
    ],
)
def test_config_errors_name_the_field(field, value, message):
    config = base_config()
    config[field] = value  # an unlocked ConfigDict accepts new fields, as a config file could write them
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_mesh_that_does_not_divide_the_devices_fails_at_start(tmp_path):
    from clip_jax.train.loop import train

    config = base_config()
    config.mesh.data = 3
    with pytest.raises(ValueError, match=r"config\.mesh"):
        train(config, str(tmp_path), devices=jax.devices()[:1])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
