"""The main job's learning check (experiments/synthetic_e2e.py), on made-up evaluation rows."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "synthetic_e2e", Path(__file__).resolve().parents[1] / "experiments" / "synthetic_e2e.py"
)
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)


def rows(shape: float, color: float) -> dict:
    return {
        "zero-shot shape, test": {"value": shape, "chance": 0.125},
        "zero-shot color, test": {"value": color, "chance": 0.125},
    }


@pytest.mark.parametrize(
    "init, trained, ok",
    [
        ((0.12, 0.10), (0.40, 0.995), True),
        ((0.12, 0.10), (0.15, 0.995), False),  # shape not learned: below 3x chance
        ((0.12, 0.10), (0.40, 0.37), False),  # colour below 3x chance (37.5%)
        ((0.12, 0.60), (0.40, 0.55), False),  # colour above 3x chance but worse than at initialisation
        ((0.45, 0.10), (0.40, 0.995), False),  # shape above 3x chance but not above init
    ],
)
def test_learning_check_requires_shape_and_colour(init: tuple, trained: tuple, ok: bool) -> None:
    lines, passed = e2e.learning_checks(rows(*init), rows(*trained))
    assert passed is ok
    assert len(lines) == 2
    for line, task, before, after in zip(lines, ("shape", "color"), init, trained, strict=True):
        assert line.startswith(
            f"zero-shot {task}, test: {100 * after:.1f}% = {after / 0.125:.1f}x chance (12.5%)"
        )
        learned = after >= 3 * 0.125 and after > before
        assert ("PASS" if learned else "FAIL") in line and f"at init {100 * before:.1f}%" in line


def test_a_previous_run_is_resumed_or_set_aside_never_deleted(tmp_path):
    workdir = tmp_path / "synthetic_tiny"
    assert e2e.previous_step(workdir) is None
    for step in (400, 600, 800):
        (workdir / "checkpoints" / str(step) / "state").mkdir(parents=True)
    for step in (400, 600):  # what orbax writes when a step is finalised; 800's save never finished
        (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").write_text("{}")
        (workdir / "checkpoints" / str(step) / "state" / "_METADATA").write_text("{}")
    (workdir / "metrics.jsonl").write_text("{}\n")
    assert e2e.previous_step(workdir) == 600
    # The README's table must be of a run from scratch: a resumed one is refused before any work.
    with pytest.raises(SystemExit, match="--fresh"):
        e2e.main(["--workdir", str(workdir), "--update-readme"])
    moved = e2e.set_aside(workdir)
    assert (
        not workdir.exists()
        and moved.parent == tmp_path
        and moved.name.startswith("synthetic_tiny.previous-")
    )
    assert (moved / "metrics.jsonl").read_text() == "{}\n" and e2e.previous_step(moved) == 600
