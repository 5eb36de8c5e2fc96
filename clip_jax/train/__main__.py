"""`python -m clip_jax.train --config FILE[:arg] --workdir DIR [--config.field=value ...]`."""

import sys

from clip_jax.train.cli import run

if __name__ == "__main__":
    sys.exit(run())
