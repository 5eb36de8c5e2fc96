"""`python -m clip_jax.sweep --config FILE[:arg] --workdir DIR ...` (clip_jax/sweep/cli.py)."""

import sys

from clip_jax.cli_errors import run_cli
from clip_jax.sweep.cli import exit_status

if __name__ == "__main__":
    sys.exit(run_cli(exit_status, "clip_jax.sweep"))
