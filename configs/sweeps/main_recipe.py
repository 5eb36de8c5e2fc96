"""The search that chose the main job's recipe (issue 17): which tiny CLIP learns shape, not only colour,
within the main job's budget on 2 CPU cores.

    python experiments/ablations/run.py main_recipe

Every run is configs/synthetic_tiny.py with the swept variables of its get_config argument; runs are long
(steps=600 by default) and evaluated every 100 steps, so each run's metrics.jsonl gives the accuracy at every
shorter budget of the same schedule too.
"""

from clip_jax.sweep import product
from configs.synthetic_tiny import get_config  # noqa: F401  (the config every run starts from)


def sweep(add):
    for run in product(**{"arg.patch": [8, 4], "arg.lr": [1e-3, 3e-3], "arg.loss": ["softmax", "sigmoid"]}):
        add(**run)
