"""The default training config: every field a run reads (see clip_jax/config_utils.py for the schema).

Usage: python -m clip_jax.train --config configs/default.py --workdir DIR --config.lr=1e-3
"""

import ml_collections

from clip_jax.config_utils import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return default_config()
