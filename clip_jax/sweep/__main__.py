"""`python -m clip_jax.sweep --config FILE[:arg] --workdir DIR ...` (clip_jax/sweep/cli.py)."""

import sys

from clip_jax.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
