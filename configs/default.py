"""The default training config: every field a run reads (see clip_jax/train/config.py for the schema).

    python -m clip_jax.train --config configs/default.py --workdir DIR --config.lr=1e-3
    python -m clip_jax.train --config configs/default.py:model=ViT-B-16,batch=4096,steps=20000 --workdir DIR

The argument after ':' sets the variables below (clip_jax.train.config.parse_arg); every other field is
set with --config.<field>=<value>.
"""

import ml_collections

from clip_jax.train.config import default_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default_config()
    a = parse_arg(arg, model=c.model, batch=c.batch_size, steps=c.total_steps, lr=c.lr, loss=c.loss)
    c.model, c.batch_size, c.total_steps, c.lr, c.loss = a.model, a.batch, a.steps, a.lr, a.loss
    return c
