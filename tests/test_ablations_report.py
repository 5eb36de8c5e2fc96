"""experiments/ablations/run.py's arithmetic: training time from the trainer's images/s, and accuracy read
at equal training time between evaluations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_py():
    spec = importlib.util.spec_from_file_location("ablations_run", REPO / "experiments/ablations/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(directory: Path, images_per_sec: float, steps: int = 100, batch: int = 10) -> None:
    """A run logged every 25 steps at a constant rate, evaluated every 50 steps with acc = step / 100."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"batch_size": batch, "log_every": 25}))
    with open(directory / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            record = {"step": step, "loss": 1.0}
            if step % 25 == 0 and step > 25:  # the first window compiles: no rate, as the trainer logs
                record["images_per_sec"] = images_per_sec
            if step % 50 == 0:
                record["eval/shape/acc1"] = step / 100
            f.write(json.dumps(record) + "\n")


def test_curve_adds_up_training_seconds(run_py, tmp_path):
    _fake_run(tmp_path / "a", images_per_sec=100.0)
    curve = run_py._curve(tmp_path / "a")
    # 10 images a step at 100 images/s: 0.1 s a step, the first window counted at the same median rate.
    assert [(s, round(t, 6)) for s, t, _ in curve] == [(50, 5.0), (100, 10.0)]
    assert curve[-1][2] == {"eval/shape/acc1": 1.0}


def test_equal_time_reads_the_slower_run_at_the_faster_runs_end(run_py, tmp_path):
    _fake_run(tmp_path / "fast", images_per_sec=200.0)  # 100 steps in 5 s
    _fake_run(tmp_path / "slow", images_per_sec=100.0)  # 50 steps by 5 s
    rows = [{"run": "fast", "status": "done"}, {"run": "slow", "status": "done"}]
    (tmp_path / "plots").mkdir()
    lines = run_py._equal_time(tmp_path, rows, ["eval/shape/acc1"], tmp_path / "plots")
    table = {
        ln.split("|")[1].strip(): ln.split("|")[2:4]
        for ln in lines
        if ln.startswith("| fast") or ln.startswith("| slow")
    }
    assert [c.strip() for c in table["fast"]] == ["1.000", "100"]
    assert [c.strip() for c in table["slow"]] == ["0.500", "50"]
    assert (tmp_path / "plots" / "eval_shape_acc1_vs_time.png").is_file()
