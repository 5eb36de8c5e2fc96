"""The trainer on 8 simulated CPU devices and on 2 processes x 4 devices.

- 3 steps on the meshes (data=8), (fsdp=8), (data=2, fsdp=2, tensor=2) match the single-device run:
  per-step losses to 1e-5 relative, parameters to 1e-5 absolute (lr 1e-4: Adam turns float noise in
  exactly-zero gradients, e.g. the key bias of attention, into updates of up to lr, so a larger lr
  needs a looser bound);
- parameters are placed as the logical axis rules say;
- a checkpoint saved on (data=8) restores bit-exactly onto (2, 2, 2) and training continues there;
- a 2-process x 4-device run on localhost matches the 1-process 8-device run, and only process 0
  writes metrics.

Each configuration runs in its own process (tests/multidevice/train_*.py): XLA_FLAGS and
jax.distributed must be set up before jax starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MESHES_SCRIPT = REPO / "tests" / "multidevice" / "train_meshes.py"
CLI = REPO / "tests" / "multidevice" / "train_cli.py"
TIMEOUT = 600  # seconds; several cold compiles on a loaded 2-core machine


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def meshes(tmp_path_factory, env) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("meshes")
    proc = subprocess.run(
        [sys.executable, str(MESHES_SCRIPT), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in b)


@pytest.mark.parametrize(
    "name, shape", [("data=8", (8, 1, 1)), ("fsdp=8", (1, 8, 1)), ("data=2,fsdp=2,tensor=2", (2, 2, 2))]
)
def test_mesh_matches_single_device(meshes, name, shape):
    results, _ = meshes
    assert results["devices"] == 8
    run = results["meshes"][name]
    assert run["mesh"] == dict(zip(("data", "fsdp", "tensor"), shape, strict=True))
    assert len(run["losses"]) == len(results["single_losses"]) == 3
    np.testing.assert_allclose(run["losses"], results["single_losses"], rtol=1e-5)
    assert run["max_abs_param_diff"] < 1e-5, run["worst_param"]


def test_params_are_placed_by_the_logical_rules(meshes):
    results, _ = meshes
    data8 = results["meshes"]["data=8"]["placement"]
    fsdp8 = results["meshes"]["fsdp=8"]["placement"]
    mixed = results["meshes"]["data=2,fsdp=2,tensor=2"]["placement"]
    # Pure data parallelism keeps whole copies of every parameter.
    assert data8["all_replicated"] and not fsdp8["all_replicated"]
    assert data8["visual/proj"]["shard_shape"] == [64, 64]
    # FSDP splits the embed axis; tiny's widths are 64, so 8 rows per device.
    assert fsdp8["visual/proj"]["spec"] == "PartitionSpec('fsdp', None)"
    assert fsdp8["visual/proj"]["shard_shape"] == [8, 64]
    assert fsdp8["visual/transformer/resblocks_0/mlp/c_fc/kernel"]["shard_shape"] == [8, 256]
    # Tensor parallelism splits the MLP hidden axis and the heads; FSDP the embed axis.
    c_fc = mixed["visual/transformer/resblocks_0/mlp/c_fc/kernel"]
    assert c_fc["spec"] == "PartitionSpec('fsdp', 'tensor')" and c_fc["shard_shape"] == [32, 128]
    c_proj = mixed["visual/transformer/resblocks_0/mlp/c_proj/kernel"]
    assert c_proj["spec"] == "PartitionSpec('tensor', 'fsdp')" and c_proj["shard_shape"] == [128, 32]
    assert "tensor" in mixed["text/transformer/resblocks_0/attn/qkv/kernel"]["spec"]
    assert mixed["logit_scale"]["spec"] == "PartitionSpec()"


def test_checkpoint_restores_onto_another_mesh_and_training_continues(meshes):
    results, _ = meshes
    r = results["resharded"]
    assert r["restored_step"] == 2 and r["restored_data_state"] == {"position": 2}
    assert r["params_differing_from_saved"] == []
    assert r["restored_placement"] == results["meshes"]["data=2,fsdp=2,tensor=2"]["placement"]
    # The resumed run logs only its own step 3, which sees the same batch as the uninterrupted run's.
    assert len(r["losses"]) == 1
    np.testing.assert_allclose(r["losses"][0], results["meshes"]["data=8"]["losses"][2], rtol=1e-5)
    assert r["max_abs_diff_vs_data8"] < 1e-5
    assert r["max_abs_diff_vs_222"] < 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(meshes, env, tmp_path):
    results, out = meshes
    address = f"127.0.0.1:{free_port()}"
    flags = [
        "--config=configs/default.py",
        "--config.model=tiny",
        "--config.batch_size=16",
        "--config.total_steps=3",
        "--config.lr=1e-4",
        "--config.warmup_steps=1",
        "--config.log_every=1",
        "--config.mesh.data=8",
        f"--workdir={tmp_path}",
    ]
    env = dict(env, JAX_NUM_CPU_DEVICES="4")
    # Process 0 joins through the command-line flags, process 1 through the environment.
    launches = [
        ([f"--coordinator_address={address}", "--num_processes=2", "--process_id=0"], {}),
        (
            [],
            {
                "CLIP_JAX_COORDINATOR_ADDRESS": address,
                "CLIP_JAX_NUM_PROCESSES": "2",
                "CLIP_JAX_PROCESS_ID": "1",
            },
        ),
    ]
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = []
    try:
        for (extra_flags, extra_env), log in zip(launches, logs, strict=True):
            with open(log, "w") as f:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(CLI), *flags, *extra_flags],
                        cwd=REPO,
                        env=dict(env, **extra_env),
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    )
                )
        # A process that fails leaves the other waiting for it forever: stop at the first failure.
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} (rc {p.returncode}):\n{log.read_text()[-4000:]}"

    assert (
        max_abs_diff(load_params(tmp_path / "final_params.npz"), load_params(out / "params_data8.npz")) < 1e-5
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # process 1 appended nothing
    np.testing.assert_allclose([r["loss"] for r in records], results["meshes"]["data=8"]["losses"], rtol=1e-5)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (tmp_path / "checkpoints" / "3").is_dir()
