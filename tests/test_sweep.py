"""clip_jax.sweep: run names, product/zipped, overrides of every config field (also through the trainer's
--set/--drop), a four-run local sweep end to end, a SIGKILLed run resumed by the rerun while finished
runs are not rerun, a run signalled as at a Slurm time limit saving and requeueing itself, a run failing
alone with its error in the summary, and the sbatch script and pickled
job that submitit submits to Slurm (fake sbatch/srun/sacct on PATH; no cluster here).

The sweeps' runs are tiny 2-step trainings on random batches, sharing a persistent compilation cache.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest

from clip_jax.sweep import DROP, product, zipped
from clip_jax.sweep.spec import load_sweep, run_name
from clip_jax.train.config import default_config
from clip_jax.train.overrides import apply_overrides, cli_overrides

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 400  # seconds for one launcher run on 2 loaded cores

CONFIG = """
from clip_jax.sweep import DROP, product
from clip_jax.train.config import default_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg, steps=2, ckpt=1)
    c = default_config()
    c.model = "tiny"
    c.batch_size = 8
    c.total_steps = a.steps
    c.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = a.ckpt
    c.data.source = "random"
    return c


def sweep(add):
    for run in product(seed=[0, 1], **{"arg.ckpt": [1, 2]}):
        add(**run)
"""
# Added to the sweep after its first four runs have finished.
MORE_RUNS = """
    add(**{"arg.steps": 150, "arg.ckpt": 10})  # SIGKILLed mid-way by the test
    add(**{"mesh.data": 3})  # valid config, but one CPU device: fails when the run starts
    add(loss="bogus")  # invalid config: failed by the launcher, never submitted
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        XLA_FLAGS="--xla_backend_optimization_level=0",
    )


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep")


def launcher(config: Path, workdir: Path, env: dict, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clip_jax.sweep", "--config", str(config), "--workdir", str(workdir)]
    cmd += ["--parallel", "2", "--poll-s", "0.3", *extra]
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out


def summary(workdir: Path) -> dict[str, dict]:
    with open(workdir / "summary.csv") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


# --- specs, names and overrides, in process ---


def test_run_names_stable_readable_and_distinct():
    assert run_name({"lr": 1e-3, "arg.loss": "sigmoid"}) == "loss=sigmoid,lr=0.001"
    assert run_name({"arg.loss": "sigmoid", "lr": 1e-3}) == run_name({"lr": 1e-3, "arg.loss": "sigmoid"})
    assert run_name({}) == "base"
    # Values that would print alike stay apart: int / float / string, and unsafe characters.
    names = [
        run_name(o)
        for o in (
            {"a": 1},
            {"a": 1.0},
            {"a": "1"},
            {"a": True},
            {"a": "x/y"},
            {"a": "x_y"},
            {"a": "DROP"},
            {"a": DROP},
        )
    ]
    assert len(set(names)) == len(names), names
    assert run_name({"evals.shape": DROP}) == "evals.shape=DROP"
    assert "/" not in run_name({"a": "x/y"}) and run_name({"a": "x/y"}) == run_name({"a": "x/y"})
    assert len(run_name({"model.vision.width": "w" * 500})) < 140


def test_product_and_zipped():
    runs = product(zipped(lr=[1, 2], warmup_steps=[10, 20]), seed=[0, 1, 2])
    assert len(runs) == 6 and runs[0] == {"lr": 1, "warmup_steps": 10, "seed": 0}
    assert {(r["lr"], r["warmup_steps"]) for r in runs} == {(1, 10), (2, 20)}
    with pytest.raises(ValueError, match="different lengths"):
        zipped(lr=[1, 2], seed=[0])
    with pytest.raises(ValueError, match="set twice"):
        product([{"lr": 1}], lr=[2])


def test_sweep_file_runs_and_duplicates(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(CONFIG)
    sweep = load_sweep(f"{path}:steps=3")
    assert [r.name for r in sweep.runs] == [
        "ckpt=1,seed=0",
        "ckpt=2,seed=0",
        "ckpt=1,seed=1",
        "ckpt=2,seed=1",
    ]
    config = sweep.resolve(sweep.runs[1])
    assert (config.total_steps, config.checkpoint_every, config.seed) == (3, 2, 0)
    path.write_text(CONFIG + "    add(seed=0, **{'arg.ckpt': 1})\n")
    with pytest.raises(ValueError, match="added twice"):
        load_sweep(str(path))
    path.write_text(CONFIG + "    add(**{'arg.seed': 1})\n")  # would be named like the field seed
    with pytest.raises(ValueError, match="both be named 'seed'"):
        load_sweep(str(path))


def leaves(config, prefix=""):
    for key, value in config.items():
        yield prefix + key, value
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")


def test_every_field_settable():
    """Every field and section of a config with evals takes its own value back, and lists, dicts and
    drops do what they say; a wrong type or path is an error naming the field."""
    config = default_config()
    config.evals.shape = {"type": "zeroshot", "dataset": "d", "task": "shape"}
    config.evals.color = {"type": "zeroshot", "dataset": "d", "task": "color"}
    config.lock()
    for path, value in leaves(config):
        value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        assert apply_overrides(config, {path: value}).to_dict() == config.to_dict(), path
    out = apply_overrides(
        config,
        {
            "evals.shape": DROP,
            "freeze": ["^visual/"],
            "lr_mults": [["^text/", 0.1]],
            "lr": 1,
            "model": "tiny",
        },
    )
    assert (
        list(out.evals) == ["color"] and out.freeze == ("^visual/",) and out.lr == 1.0 and out.model == "tiny"
    )
    assert len(apply_overrides(config, {"evals.*": DROP}).evals) == 0
    assert apply_overrides(config, {"evals": {}}).evals.to_dict() == {}
    assert config.evals.shape.task == "shape"  # the input is not changed
    for bad, match in [
        ({"lr": "fast"}, "config.lr has type float"),
        ({"batch_size": 1.5}, "config.batch_size has type int"),
        ({"scan": 1}, "config.scan has type bool"),
        ({"mesh.nope.x": 1}, "config.mesh.nope does not exist"),
        ({"evals.probe": DROP}, "nothing to drop"),
    ]:
        with pytest.raises(ValueError, match=match):
            apply_overrides(config, bad)
    parsed = cli_overrides(
        config, ["freeze=['^visual/']", "loss=sigmoid", "init_from=001", "evals={}"], ["evals.shape"]
    )
    assert parsed == {
        "evals.shape": DROP,
        "freeze": ["^visual/"],
        "loss": "sigmoid",
        "init_from": "001",
        "evals": {},
    }


def test_train_cli_set_and_drop(tmp_path, env):
    """`python -m clip_jax.train ... --drop evals.* --set freeze=[...]` reaches train() (stubbed here)."""
    cfg = tmp_path / "c.py"
    cfg.write_text(
        "from clip_jax.train.config import default_config\n"
        "def get_config():\n    c = default_config()\n"
        "    c.evals.shape = {'type': 'zeroshot', 'dataset': 'd'}\n    return c\n"
    )
    stub = (
        "import sys; import clip_jax.train.loop as m; from clip_jax.train import cli\n"
        "m.train = lambda c, w: print('CONFIG', c.to_json())\n"
        "sys.exit(cli.run())\n"
    )
    args = ["--config", str(cfg), "--workdir", str(tmp_path / "w"), "--config.lr=0.01"]
    args += ["--drop", "evals.*", "--set", "freeze=['^visual/']", "--set", "lr_mults=[('^text/', 0.5)]"]
    out = subprocess.run(
        [sys.executable, "-c", stub, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads(out.stdout.split("CONFIG", 1)[1])
    assert config["evals"] == {} and config["freeze"] == ["^visual/"] and config["lr"] == 0.01
    assert config["lr_mults"] == [["^text/", 0.5]]


def test_run_states_from_disk(tmp_path):
    """What a run's files say: pending, running (a live process), interrupted (its process is gone),
    done / failed as the job wrote, and done for a run started by hand that reached total_steps."""
    from clip_jax.sweep import status

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    assert status.effective(str(run)) == "pending"
    status.write_json(
        str(run / "submission.json"), {"executor": "local", "job_id": dead.pid, "submitted": time.time()}
    )
    assert status.effective(str(run)) == "interrupted"  # submitted, never started, gone
    status.update(str(run), status="running", pid=os.getpid(), executor="local")
    assert status.effective(str(run)) == "running"
    status.update(str(run), pid=dead.pid)
    assert status.effective(str(run)) == "interrupted"
    for final in ("done", "failed"):
        status.update(str(run), status=final)
        assert status.effective(str(run)) == final
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    (by_hand / "config.json").write_text(json.dumps({"total_steps": 3}))
    (by_hand / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n{"step": 3, "eval/x/acc1": 0.5}\n{"st')
    assert status.effective(str(by_hand)) == "done"
    (by_hand / "config.json").write_text(json.dumps({"total_steps": 4}))
    (by_hand / "checkpoints").mkdir()
    assert status.effective(str(by_hand)) == "interrupted"
    from clip_jax.sweep.results import final_metrics
    from clip_jax.sweep.status import read_metrics

    assert final_metrics(read_metrics(str(by_hand))) == {"step": 3, "train/loss": 1.0, "eval/x/acc1": 0.5}


# --- Slurm, up to the sbatch script ---


def test_slurm_submission(tmp_path, monkeypatch):
    """The sbatch script carries every Slurm option and runs submitit's job under srun; the pickled job
    trains the run's config in its workdir, and its checkpoint() requeues the same run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "sbatch": 'echo "Submitted batch job 4242"',
        "srun": "exit 0",
        "sacct": 'printf "JobID|State|NodeList\\n4242|PENDING|None\\n"',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = tmp_path / "s.py"
    cfg.write_text(
        CONFIG.replace('for run in product(seed=[0, 1], **{"arg.ckpt": [1, 2]})', "for run in [{'seed': 3}]")
    )
    from clip_jax.sweep.cli import main

    workdir = tmp_path / "sweep"
    args = ["--config", str(cfg), "--workdir", str(workdir), "--executor", "slurm", "--no-wait"]
    args += ["--partition", "gpu", "--account", "proj", "--nodes", "2", "--tasks-per-node", "8"]
    args += ["--gpus-per-node", "8", "--time", "90", "--sbatch", "constraint=h100", "--sbatch", "exclusive"]
    args += ["--setup", "module load cuda", "--drop", "evals.*"]
    assert main(args) == 0
    run_dir = workdir / "seed=3"
    script = (run_dir / "logs" / "4242_submission.sh").read_text()
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=90",
        "#SBATCH --constraint=h100",
        "#SBATCH --exclusive",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "module load cuda",
    ]:
        assert line in script.splitlines(), (line, script)
    assert "srun --unbuffered" in script and "submitit.core._submit" in script
    with open(run_dir / "logs" / "4242_submitted.pkl", "rb") as f:
        delayed = pickle.load(f)
    job = delayed.function
    assert type(job).__name__ == "TrainJob" and job.workdir == str(run_dir) and job.executor == "slurm"
    assert job.config.seed == 3 and job.config.total_steps == 2
    requeued = job.checkpoint().function
    assert requeued.workdir == job.workdir and requeued.config == job.config
    # The run is in the Slurm queue: shown pending, and a rerun does not submit it again.
    assert summary(workdir)["seed=3"]["status"] == "pending"
    from clip_jax.sweep.launcher import WATCH, plan

    assert [p.action for p in plan(load_sweep(str(cfg)), str(workdir))] == [WATCH]


# --- local sweeps end to end (they build on each other: same sweep directory, in order) ---


def test_local_sweep_of_four_runs(sweep_dir, env, tmp_path_factory):
    cfg = sweep_dir.parent / "four_runs.py"
    cfg.write_text(CONFIG)
    rc, out = finish(launcher(cfg, sweep_dir, env))
    assert rc == 0, out[-3000:]
    rows = summary(sweep_dir)
    assert sorted(rows) == sorted(["ckpt=1,seed=0", "ckpt=2,seed=0", "ckpt=1,seed=1", "ckpt=2,seed=1"])
    for name, row in rows.items():
        assert row["status"] == "done" and row["step"] == "2", row
        assert float(row["train/loss"]) > 0 and float(row["wall_s"]) > 0
        assert (sweep_dir / name / "tensorboard").is_dir() and (sweep_dir / name / "config.json").is_file()
    # Two runs at a time, each on its own core.
    cpus = {tuple(json.loads((sweep_dir / n / "submission.json").read_text())["cpus"]) for n in rows}
    assert len(cpus) == min(2, os.cpu_count() or 1)
    md = (sweep_dir / "summary.md").read_text()
    assert all(name in md for name in rows) and "4 runs: 4 done" in md
    assert (sweep_dir / "plots" / "by_seed.png").is_file() and (sweep_dir / "plots" / "curves.png").is_file()
    assert "4 runs: 0 done, 2 running, 0 failed, 2 pending" in out and "4 runs: 4 done, 0 running" in out
    # --dry-run lists each run with its workdir, the command of the same single run, and that it is done.
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "clip_jax.sweep",
            "--config",
            str(cfg),
            "--workdir",
            str(sweep_dir),
            "--dry-run",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    for name in rows:
        assert f"{name}  [done -> skip]" in dry.stdout and f"workdir: {sweep_dir / name}" in dry.stdout
    assert f"--config {cfg}:ckpt=2 --workdir {sweep_dir / 'ckpt=2,seed=1'} --set seed=1" in dry.stdout


def test_killed_run_resumes_signalled_run_requeues_failing_run_alone(sweep_dir, env):
    cfg = sweep_dir.parent / "four_runs.py"
    assert (sweep_dir / "ckpt=1,seed=0" / "status.json").exists(), "runs after test_local_sweep_of_four_runs"
    cfg.write_text(CONFIG + MORE_RUNS)
    before = {n: state(sweep_dir / n) for n in summary(sweep_dir)}
    long_run = sweep_dir / "ckpt=10,steps=150"

    proc = launcher(cfg, sweep_dir, env)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:  # SIGKILL the long run once its first checkpoint is complete
        ckpts = long_run / "checkpoints"
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            os.kill(state(long_run)["pid"], signal.SIGKILL)
            break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    rc, out = finish(proc)
    assert rc == 1, out[-3000:]
    rows = summary(sweep_dir)
    assert rows["ckpt=10,steps=150"]["status"] == "interrupted", out[-3000:]
    assert int(rows["ckpt=10,steps=150"]["step"]) < 150
    assert rows["mesh.data=3"]["status"] == "failed" and "mesh" in rows["mesh.data=3"]["error"].lower()
    assert rows["loss=bogus"]["status"] == "failed" and "config.loss='bogus'" in rows["loss=bogus"]["error"]
    md = (sweep_dir / "summary.md").read_text()
    assert "### mesh.data=3 (failed)" in md and "### loss=bogus (failed)" in md
    for name, old in before.items():  # finished runs were not started again
        assert rows[name]["status"] == "done" and state(sweep_dir / name) == old, name

    # The rerun resumes the killed run. Mid-way it gets submitit's time-limit signal (USR2, as Slurm
    # sends it): it saves the step it is at, requeues itself through checkpoint() (the local executor
    # restarts it) and resumes from that step.
    proc = launcher(cfg, sweep_dir, env)
    resumed_at, offset = None, None
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        log = err_log(long_run)
        if resumed_at is None and "resumed from step" in log:
            resumed_at = resumed_steps(log)[0]
            offset = (long_run / "metrics.jsonl").stat().st_size
        if offset is not None:
            with open(long_run / "metrics.jsonl") as f:
                f.seek(offset)
                if any(json.loads(line)["step"] > resumed_at + 1 for line in f.readlines()[:-1]):
                    os.kill(state(long_run)["pid"], signal.SIGUSR2)
                    break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    rc, out = finish(proc)
    assert rc == 1, out[-3000:]  # the failed runs stay failed without --retry-failed
    rows = summary(sweep_dir)
    assert rows["ckpt=10,steps=150"]["status"] == "done" and rows["ckpt=10,steps=150"]["step"] == "150"
    assert state(long_run)["attempts"] == 3
    log = err_log(long_run)
    preempted = [
        int(line.split("preempted at step ")[1].split(";")[0])
        for line in log.splitlines()
        if "preempted at step" in line
    ]
    assert len(preempted) == 1 and resumed_steps(log) == [resumed_at, preempted[0]], log[-3000:]
    assert 10 <= resumed_at < preempted[0] < 150 and resumed_at % 10 == 0
    assert state(sweep_dir / "mesh.data=3")["attempts"] == 1
    for name, old in before.items():
        assert state(sweep_dir / name) == old, name


def err_log(run_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "logs").glob("*_log.err"), key=os.path.getmtime))


def resumed_steps(log: str) -> list[int]:
    return [
        int(line.rsplit("resumed from step ", 1)[1].split()[0])
        for line in log.splitlines()
        if "resumed from step" in line
    ]
