"""A sweep's numbers do not depend on --parallel: a run launched alone (--parallel 1) and the same run
launched two at a time (--parallel 2), each pinned to the same number of CPUs (--cpus-per-run, as
experiments/ablations/run.py does), give bit-identical training losses and evaluation results.

Why it needs the pinning: XLA's CPU compiler splits loop fusions into as many parts as the process
may use CPUs, so a run on 1 CPU and on 2 differ in the last bits (clip_jax/sweep/job.py, pin_to_cpus).
The runs share no compilation cache: a cached executable compiled for one CPU count would hide the
difference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 400  # seconds for one launcher run on 2 loaded cores

CONFIG = """
from clip_jax.data import default_data_config
from clip_jax.sweep import product
from clip_jax.train.config import default_config


def get_config(arg=None):
    c = default_config()
    c.model = "tiny"
    c.batch_size = 16
    c.total_steps = 4
    c.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 4
    c.data = default_data_config()
    c.data.source = "synthetic"
    c.data.name = "tiny"
    c.data.shuffle_buffer = 64
    c.data.data_dir = DATA_DIR
    c.evals.color = {
        "type": "zeroshot", "dataset": "clip_synthetic/tiny", "task": "color", "data_dir": DATA_DIR,
        "batch_size": 16, "max_batches": 2,
    }
    return c


def sweep(add):
    for run in product(seed=[0, 1]):
        add(**run)
"""


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory) -> Path:
    from clip_jax.data import prepare_synthetic

    data_dir = tmp_path_factory.mktemp("tfds")
    prepare_synthetic(data_dir, config="tiny")
    path = tmp_path_factory.mktemp("config") / "two_runs.py"
    path.write_text(f"DATA_DIR = {str(data_dir)!r}\n" + CONFIG)
    return path


def launch(config: Path, workdir: Path, parallel: int, cpus_per_run: int, *extra: str) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "clip_jax.sweep", "--config", str(config), "--workdir", str(workdir)]
    cmd += ["--parallel", str(parallel), "--cpus-per-run", str(cpus_per_run), "--poll-s", "0.3", *extra]
    # A session of its own: on a timeout the launcher and the runs it started are killed together.
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    # Exit status 1: some run of the sweep is not done (--only left it out); the caller checks its own.
    assert proc.returncode in (0, 1) and "failed):" not in out, out[-3000:]


def numbers(run_dir: Path) -> list[dict]:
    """Every logged loss and evaluation result of a run, in order (timings left out)."""
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    kept = [{k: v for k, v in r.items() if k in ("step", "loss") or k.startswith("eval/")} for r in records]
    return [r for r in kept if len(r) > 1]


def test_parallel_1_and_2_give_the_same_bits(sweep_config, tmp_path):
    # seed=0 alone with the whole machine to itself, then both runs at once.
    launch(sweep_config, tmp_path / "one_at_a_time", 1, 1, "--only", "seed=0")
    launch(sweep_config, tmp_path / "two_at_a_time", 2, 1)
    alone, beside = (
        numbers(tmp_path / "one_at_a_time" / "seed=0"),
        numbers(tmp_path / "two_at_a_time" / "seed=0"),
    )
    assert [r["step"] for r in alone if "loss" in r] == [1, 2, 3, 4]
    assert any("eval/color/acc1" in r for r in alone)
    assert alone == beside  # floats compared exactly
    for run_dir in (tmp_path / "one_at_a_time" / "seed=0", *(tmp_path / "two_at_a_time").glob("seed=*")):
        recorded = json.loads((run_dir / "status.json").read_text())
        assert recorded["status"] == "done" and recorded["threads"] == 1 and recorded["cpu"], recorded
    # The other seed is another run: equal numbers would mean the comparison saw nothing.
    assert numbers(tmp_path / "two_at_a_time" / "seed=1") != beside
