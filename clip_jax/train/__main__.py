"""`python -m clip_jax.train --config FILE[:arg] --workdir DIR [--config.field=value ...]`."""

import sys

from absl import app

from clip_jax.train.loop import _define_flags, main

if __name__ == "__main__":
    _define_flags()
    app.run(main, argv=sys.argv)
