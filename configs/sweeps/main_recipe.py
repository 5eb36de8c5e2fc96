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
    # Round 1: patch size, learning rate and loss (the main job's recipe was patch 8, lr 1e-3, softmax).
    # Patch 4 at lr 3e-3 was stopped at step ~150 (behind the others there, at twice the step time).
    for run in product(**{"arg.patch": [8, 4], "arg.lr": [1e-3, 3e-3], "arg.loss": ["softmax", "sigmoid"]}):
        if not (run["arg.patch"] == 4 and run["arg.lr"] == 3e-3):
            add(**run)
    # Round 2, from round 1's best (patch 8, lr 1e-3, softmax): more pixels per patch at the same 16
    # tokens, a wider or deeper model, a larger batch, a higher learning rate.
    base = {"arg.patch": 8, "arg.lr": 1e-3, "arg.loss": "softmax"}
    for change in (
        {"arg.image_size": 64, "arg.patch": 16},
        {"arg.image_size": 48, "arg.patch": 12},
        {"arg.width": 256},
        {"arg.layers": 6},
        {"arg.batch": 256},
        {"arg.lr": 2e-3},
    ):
        add(**{**base, **change})
    # Round 3: round 2 found a larger batch the most sample-efficient (batch 256 reached 37% shape at
    # step 400, more than batch 128 after 600 steps, i.e. with fewer images) and depth 3 no worse than 2:
    # depth 2, and the batch pushed further at a budget of about 150k images.
    add(**{**base, "arg.layers": 2})
    for batch, steps in ((256, 500), (512, 300)):
        add(**{**base, "arg.batch": batch, "arg.steps": steps})
