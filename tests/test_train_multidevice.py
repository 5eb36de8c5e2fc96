"""The trainer on 8 simulated CPU devices and on 2 processes x 4 devices.

- 3 steps on the meshes (data=8), (fsdp=8), (data=2, fsdp=2, tensor=2) match the single-device run:
  the loss and gradient norm of step 1 (same parameters, same batch: only the order of float sums
  differs) to 1e-5 relative; the parameters after the last step within adam_drift_bound (Adam turns float
  noise in near-zero gradients, e.g. the key bias of attention, into updates of up to ~lr, so later
  steps can only be held to the bound on how far two Adam trajectories can drift apart);
- parameters are placed as the logical axis rules say;
- a checkpoint saved on (data=8) restores bit-exactly onto (2, 2, 2) and training continues there;
- a 2-process x 4-device run on localhost matches the 1-process 8-device run, and only process 0
  writes metrics;
- SIGTERM to one process of a 2-process run stops both at the same step, with one checkpoint of it
  (JAX's preemption service agrees on the step; without it, an allgather on log steps; no collective
  per step either way).

Every run is a CLI run in its own process (tests/multidevice/train_cli.py): the device count and
jax.distributed must be set before jax starts. Independent runs overlap, to use both cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from adam_bounds import adam_drift_bound

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tests" / "multidevice" / "train_cli.py"
TIMEOUT = 900  # seconds for all runs; cold compiles of several runs at once on a loaded 2-core machine
# The tests compare runs with each other, never with XLA's optimised code, and -O0 halves the compiles.
XLA_FLAGS = "--xla_backend_optimization_level=0"
CONFIG = {
    "model": "tiny",
    "batch_size": 16,
    "total_steps": 3,
    "checkpoint_every": 2,
    "log_every": 1,
    "lr": 1e-4,
    "warmup_steps": 1,
}
SIGTERM_RUNS = {"sigterm": {}, "sigterm_allgather": {"JAX_ENABLE_PREEMPTION_SERVICE": "false"}}
MESHES = {"data=8": (8, 1, 1), "fsdp=8": (1, 8, 1), "data=2,fsdp=2,tensor=2": (2, 2, 2)}


def mesh_flags(shape) -> list[str]:
    return [f"--config.mesh.{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"), shape, strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One CLI process; its output goes to WORKDIR/cli.log (or a named log for multi-process runs)."""

    def __init__(
        self,
        workdir: Path,
        env: dict,
        flags: list[str],
        log_name: str = "cli.log",
        config: dict | None = None,
    ):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / log_name
        cmd = [sys.executable, str(CLI), "--config=configs/default.py:data=random", f"--workdir={workdir}"]
        cmd += [f"--config.{k}={v}" for k, v in {**CONFIG, **(config or {})}.items()] + flags
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

    def check(self) -> None:
        assert self.proc.returncode == 0, (
            f"{self.log} (rc {self.proc.returncode}):\n{self.log.read_text()[-4000:]}"
        )


def wait_all(groups: list[list[Run]], deadline: float) -> None:
    """Wait for every run; a failed run's group (the processes of one multi-process run, which would
    wait for it forever) is killed."""
    try:
        while any(r.proc.poll() is None for g in groups for r in g) and time.monotonic() < deadline:
            for g in groups:
                if any(r.proc.poll() not in (None, 0) for r in g):
                    for r in g:
                        if r.proc.poll() is None:
                            r.proc.kill()
            time.sleep(0.2)
    finally:
        for g in groups:
            for r in g:
                if r.proc.poll() is None:
                    r.proc.kill()
                r.proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("multidevice")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        XLA_FLAGS=XLA_FLAGS,
    )
    env8 = dict(env, XLA_FLAGS=f"{XLA_FLAGS} --xla_force_host_platform_device_count=8")
    deadline = time.monotonic() + TIMEOUT

    runs = {"single": Run(base / "single", env, [])}
    for name, shape in MESHES.items():
        record = {"CLIP_JAX_TEST_RECORD_SAVES": "1"} if name == "data=8" else {}
        runs[name] = Run(base / name, dict(env8, **record), mesh_flags(shape))
    wait_all([[r] for r in runs.values()], deadline)

    # The (data=8) run's step-2 checkpoint, resumed on (2, 2, 2) for the last step.
    resharded = base / "resharded"
    if runs["data=8"].proc.returncode == 0:
        shutil.copytree(base / "data=8" / "checkpoints", resharded / "checkpoints")
        shutil.rmtree(resharded / "checkpoints" / "3")
    runs["resharded"] = Run(resharded, env8, mesh_flags(MESHES["data=2,fsdp=2,tensor=2"]))

    # 2 processes x 4 devices, mesh (data=8). Process 0 joins through the command-line flags,
    # process 1 through the environment; both share the workdir, as orbax needs.
    address = f"127.0.0.1:{free_port()}"
    env4 = dict(env, JAX_NUM_CPU_DEVICES="4")
    two = base / "two_processes"
    runs["process_0"] = Run(
        two,
        env4,
        [
            *mesh_flags(MESHES["data=8"]),
            f"--coordinator_address={address}",
            "--num_processes=2",
            "--process_id=0",
        ],
        "process_0.log",
    )
    env_1 = dict(
        env4, CLIP_JAX_COORDINATOR_ADDRESS=address, CLIP_JAX_NUM_PROCESSES="2", CLIP_JAX_PROCESS_ID="1"
    )
    runs["process_1"] = Run(two, env_1, mesh_flags(MESHES["data=8"]), "process_1.log")

    # The same, 6 steps logged every 2 and no periodic checkpoint; process 1 alone gets SIGTERM while
    # it fetches the batch of step 3. Once with JAX's preemption service, once without it (the
    # processes then agree by an allgather on log steps).
    long = {"total_steps": 6, "log_every": 2, "checkpoint_every": 100}
    groups = []
    for name, extra_env in SIGTERM_RUNS.items():
        stop, address = base / name, f"127.0.0.1:{free_port()}"
        procs = []
        for i in range(2):
            env_i = dict(
                env4,
                CLIP_JAX_COORDINATOR_ADDRESS=address,
                CLIP_JAX_NUM_PROCESSES="2",
                CLIP_JAX_PROCESS_ID=str(i),
                **extra_env,
            )
            if i == 1:
                env_i["CLIP_JAX_TEST_SIGTERM_AT"] = "2"
            procs.append(Run(stop, env_i, mesh_flags(MESHES["data=8"]), f"process_{i}.log", config=long))
        runs[f"{name}_0"], runs[f"{name}_1"] = procs
        groups.append(procs)
    wait_all([[runs["resharded"]], [runs["process_0"], runs["process_1"]], *groups], deadline)
    return runs


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def max_abs_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in b}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def losses(workdir: Path) -> list[float]:
    return [r["loss"] for r in records(workdir)]


def assert_same_first_step(got: Path, want: Path) -> None:
    """Step 1 runs on the same parameters and batch in both: equal up to the order of float sums."""
    a, b = records(got)[0], records(want)[0]
    assert a["step"] == b["step"] == 1
    for key in ("loss", "grad_norm"):
        assert a[key] == pytest.approx(b[key], rel=1e-5), key


def placement(run: Run) -> dict:
    return json.loads((run.workdir / "placement.json").read_text())


@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_matches_single_device(runs, name):
    runs["single"].check()
    runs[name].check()
    assert placement(runs[name])["mesh"] == dict(zip(("data", "fsdp", "tensor"), MESHES[name], strict=True))
    single, sharded = runs["single"].workdir, runs[name].workdir
    assert len(losses(sharded)) == len(losses(single)) == CONFIG["total_steps"]
    assert_same_first_step(sharded, single)
    diff, worst = max_abs_diff(
        load_params(sharded / "final_params.npz"), load_params(single / "final_params.npz")
    )
    assert diff <= adam_drift_bound(CONFIG["total_steps"], CONFIG["lr"]), (diff, worst)


def test_params_are_placed_by_the_logical_rules(runs):
    for name in MESHES:
        runs[name].check()
    data8, fsdp8, mixed = (placement(runs[name]) for name in MESHES)
    c_fc, c_proj = (f"visual/transformer/resblocks_0/mlp/{m}/kernel" for m in ("c_fc", "c_proj"))
    # Pure data parallelism keeps whole copies of every parameter.
    assert data8["all_replicated"] and data8["params"]["visual/proj"]["shard_shape"] == [64, 64]
    # FSDP splits the embed axis; tiny's widths are 64, so 8 rows per device.
    assert not fsdp8["all_replicated"]
    assert fsdp8["params"]["visual/proj"] == {"spec": ["fsdp", None], "shard_shape": [8, 64]}
    assert fsdp8["params"][c_fc]["shard_shape"] == [8, 256]
    # Tensor parallelism splits the MLP hidden axis (256) and the attention heads; FSDP the embed axis.
    assert mixed["params"][c_fc] == {"spec": ["fsdp", "tensor"], "shard_shape": [32, 128]}
    assert mixed["params"][c_proj] == {"spec": ["tensor", "fsdp"], "shard_shape": [128, 32]}
    qkv = mixed["params"]["text/transformer/resblocks_0/attn/qkv/kernel"]
    assert "tensor" in qkv["spec"] and qkv["shard_shape"][2] == 1  # 2 heads, 1 per tensor shard
    assert mixed["params"]["logit_scale"] == {"spec": [], "shard_shape": []}


def test_checkpoint_restores_onto_another_mesh_and_training_continues(runs):
    runs["data=8"].check()
    runs["data=2,fsdp=2,tensor=2"].check()
    runs["resharded"].check()
    data8, mixed, resharded = (
        runs["data=8"].workdir,
        runs["data=2,fsdp=2,tensor=2"].workdir,
        runs["resharded"].workdir,
    )
    restored = json.loads((resharded / "restored.json").read_text())
    assert restored["step"] == 2
    # Every process's input position: 2 batches consumed.
    assert restored["data_state"] == {"processes": [{"position": 2}]}
    assert restored["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert restored["params"] == placement(runs["data=2,fsdp=2,tensor=2"])["params"]
    saved, back = load_params(data8 / "saved_params_2.npz"), load_params(resharded / "restored_params.npz")
    assert saved.keys() == back.keys()
    assert [k for k in saved if not np.array_equal(saved[k], back[k])] == []
    # The resumed run logs only its own step 3, which sees the same batch as the uninterrupted run's and
    # starts from the bit-identical state: equal up to the order of float sums on the other mesh.
    assert len(losses(resharded)) == 1
    for key in ("loss", "grad_norm"):
        assert records(resharded)[0][key] == pytest.approx(records(data8)[2][key], rel=1e-5), key
    final = load_params(resharded / "final_params.npz")
    # From the same Adam state, one step of drift; against the (2, 2, 2) run, which drifted from the
    # (data=8) one from step 1 on, three.
    assert max_abs_diff(final, load_params(data8 / "final_params.npz"))[0] <= adam_drift_bound(
        1, CONFIG["lr"]
    )
    assert max_abs_diff(final, load_params(mixed / "final_params.npz"))[0] <= adam_drift_bound(
        3, CONFIG["lr"]
    )


def test_two_processes_match_one_process(runs):
    runs["data=8"].check()
    runs["process_0"].check()
    runs["process_1"].check()
    two, data8 = runs["process_0"].workdir, runs["data=8"].workdir
    assert placement(runs["process_0"])["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    diff, worst = max_abs_diff(load_params(two / "final_params.npz"), load_params(data8 / "final_params.npz"))
    assert diff <= adam_drift_bound(CONFIG["total_steps"], CONFIG["lr"]), (diff, worst)
    assert [r["step"] for r in records(two)] == [1, 2, 3]  # process 1 appended nothing
    assert_same_first_step(two, data8)
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (two / "checkpoints" / "3").is_dir()


@pytest.mark.parametrize("name", list(SIGTERM_RUNS))
def test_sigterm_to_one_process_stops_both_at_the_same_step(runs, name):
    import re

    runs[f"{name}_0"].check()
    runs[f"{name}_1"].check()
    stopped = [re.findall(r"preempted at step (\d+)", runs[f"{name}_{i}"].log.read_text()) for i in range(2)]
    assert stopped[0] and stopped[0] == stopped[1], stopped
    step = int(stopped[0][0])
    if name == "sigterm_allgather":
        assert step == 4  # the first log step after the notice
    assert 3 <= step < 6
    workdir = runs[f"{name}_0"].workdir
    checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == [step]
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [s for s in (2, 4, 6) if s <= step]
