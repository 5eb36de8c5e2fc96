"""Tensor parallelism keeps the Megatron layout: heads and MLP columns sharded, weights never gathered.

The q/k/v projection multiplies by slices of the packed [W, 3, H, D] kernel so that each flattens with the
sharded heads axis outermost; a layout that merged the unsharded `3` in front of the heads would make XLA
all-gather the kernel instead. Checked on the compiled HLO of one block on a (data=2, tensor=4) mesh.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "multidevice" / "tensor_collectives.py"


def test_block_collectives_on_a_tensor_mesh() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # Forward: one all-reduce of the [rows, W] activations after attention and one after the MLP.
    rows = 4 * 10 // 2  # batch 4 over data=2, 10 tokens
    assert found["forward"] == [["all-reduce", f"f32[{rows},256]{{1,0}}"]] * 2
    # Backward: only all-reduces (activation gradients, replicated-parameter gradients); no weight gathers.
    assert found["grad"] and all(op == "all-reduce" for op, _ in found["grad"])
