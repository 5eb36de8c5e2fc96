"""Run a check script of tests/multidevice/ in its own process and read the JSON it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_json_script(script: Path, timeout: float) -> dict:
    """The script's JSON output. Its own process, since device counts and XLA flags must be set before
    jax is imported; the caller's XLA_FLAGS are dropped so that the script sets its own."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)
