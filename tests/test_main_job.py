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
    "init_color, color, ok",
    [
        (0.10, 0.995, True),
        (0.10, 0.37, False),  # below 3x chance (37.5%)
        (0.60, 0.55, False),  # above 3x chance but worse than at initialisation
    ],
)
def test_learning_check_is_on_the_headline_task(init_color: float, color: float, ok: bool) -> None:
    lines, passed = e2e.learning_checks(rows(0.12, init_color), rows(0.15, color))
    assert passed is ok
    assert len(lines) == 2
    shape_line, color_line = lines
    assert shape_line.startswith("zero-shot shape, test: 15.0% = 1.2x chance (12.5%)")
    assert shape_line.endswith("not learned at this budget")  # reported, never required
    assert ("PASS" if ok else "FAIL") in color_line and f"at init {100 * init_color:.1f}%" in color_line
