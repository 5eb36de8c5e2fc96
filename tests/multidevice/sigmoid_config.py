"""The trainer tests' config for the sigmoid (SigLIP) loss: the tiny model with a learned logit bias."""

import ml_collections

from clip_jax.train.config import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = default_config()
    with c.ignore_type():
        c.model = ml_collections.ConfigDict({"base": "tiny", "init_logit_bias": -10.0})
    c.loss = "sigmoid"
    return c
