"""benchmarks/run_all.py's bookkeeping: what results.json keeps, and refusing a Python without the extras."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


@pytest.fixture
def run_all(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # run_all puts benchmarks/ on it
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_JSON", tmp_path / "results.json")
    monkeypatch.setattr(module, "RESULTS_MD", tmp_path / "RESULTS.md")
    monkeypatch.setattr(module, "RESULTS_GPU_MD", tmp_path / "RESULTS_GPU.md")
    return module


GOOD = {
    "quick": False,
    "date": "2026-01-01 00:00 UTC",
    "wall_s": 60.0,
    "load_before": 0.5,
    "load_after": 0.6,
    "xla_flags": "",
    "result": {
        "name": "tokenize 80k ImageNet prompts",
        "ours_per_s": 9e4,
        "theirs_per_s": 4e3,
        "ratio": 22.5,
    },
}


def _failure(quick: bool) -> dict:
    """What run_worker returns for a benchmark that failed: no result, an error."""
    record = {k: v for k, v in GOOD.items() if k != "result"}
    return {**record, "quick": quick, "date": "2026-01-02 00:00 UTC", "error": "exit status 1"}


def test_stored_record_never_loses_figures(run_all):
    failed = _failure(False)
    kept = run_all.stored_record(GOOD, failed)
    assert kept["result"] == GOOD["result"] and kept["date"] == GOOD["date"]
    assert kept["failed_attempt"] == {
        "date": "2026-01-02 00:00 UTC",
        "quick": False,
        "error": "exit status 1",
    }
    quick_ok = {**GOOD, "quick": True, "date": "2026-01-03 00:00 UTC"}
    assert run_all.stored_record(GOOD, quick_ok) is GOOD
    newer = {**GOOD, "date": "2026-01-04 00:00 UTC"}
    assert run_all.stored_record(kept, newer) is newer  # a success clears the noted failure
    assert run_all.stored_record(None, failed) is failed  # nothing to keep: the failure is the record


def test_failed_run_keeps_results_and_says_so(run_all, monkeypatch):
    run_all.RESULTS_JSON.write_text(json.dumps({"tokenizer": GOOD}))
    failure = _failure(True)
    monkeypatch.setattr(run_all, "run_worker", lambda name, quick: dict(failure))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "tokenizer"])
    with pytest.raises(SystemExit, match="failed: tokenizer"):
        run_all.main()
    stored = json.loads(run_all.RESULTS_JSON.read_text())["tokenizer"]
    assert stored["result"] == GOOD["result"]
    assert stored["failed_attempt"]["error"] == "exit status 1"
    md = run_all.RESULTS_MD.read_text()
    assert "22.50x" in md and "FAILED and kept these figures" in md


def test_refuses_python_without_the_extras(run_all, monkeypatch):
    run_all.RESULTS_JSON.write_text(json.dumps({"tokenizer": GOOD}))
    before = run_all.RESULTS_JSON.read_text()
    monkeypatch.setattr(run_all, "REQUIRED_MODULES", ("jax", "no_such_module_for_this_test"))
    monkeypatch.setattr(run_all, "run_worker", lambda name, quick: pytest.fail("ran a benchmark"))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "tokenizer"])
    with pytest.raises(SystemExit, match="lacks no_such_module_for_this_test.*scripts/bench.sh"):
        run_all.main()
    assert run_all.RESULTS_JSON.read_text() == before and not run_all.RESULTS_MD.exists()
