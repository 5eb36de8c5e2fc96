"""Gradient accumulation gives the full-batch gradients (not merely similar Adam updates, which are
blind to the gradient's scale): both losses, accum_steps 2 and 4, on one device and on 8 simulated devices
with the sharded loss. The computation runs in tests/multidevice/accum_check.py, its own process."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_output import run_json_script

REPO = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = REPO / "tests" / "multidevice" / "accum_check.py"

# The micro-batched and one-pass gradients are the same sums of the same per-example terms in another
# order. Each reduction has at most 64 terms here (batch 32, <= 16 tokens or patches), so an entry's
# rounding error is at most 64 * 2^-24 ~ 4e-6 of the sum of the terms' magnitudes, which the largest
# entry of the parameter bounds up to the small cancellation in a gradient: 1e-5 of it. A sum instead
# of a mean is off by a factor accum_steps (error >= 1), micro-batch-local negatives by O(1).
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def check():
    return run_json_script(CHECK_SCRIPT, timeout=600)


def test_every_case_ran(check):
    assert check["devices"] == 8
    cases = {(r["loss"], r["accum"], r["devices"]) for r in check["results"]}
    assert cases == {(loss, k, d) for loss in ("softmax", "sigmoid") for k in (2, 4) for d in (1, 8)}


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_accumulated_gradients_equal_full_batch_gradients(check, loss):
    for r in (r for r in check["results"] if r["loss"] == loss):
        assert len(r["errs"]) > 20  # every parameter, logit scale (and bias) included
        bad = {k: v for k, v in r["errs"].items() if not v <= REL_TOL}
        assert not bad, (r["accum"], r["devices"], bad)
        accumulated, full = r["loss_value"]
        assert accumulated == pytest.approx(full, rel=REL_TOL)
