"""Ablation: FLIP patch dropout 0 / 0.5 / 0.75 on the embedded synthetic dataset.

    python experiments/ablations/run.py flip
    python -m clip_jax.train --config configs/sweeps/flip.py --config.patch_dropout=0.5 --workdir DIR  # one run

FLIP (Li et al. 2023) drops a random 50-75% of the image patches in training: each step is cheaper, so
at an equal wall-clock budget the model sees more images, and it reports better accuracy for the time.
Each run is configs/synthetic_tiny.py with its patch_dropout (the class token is always kept; evaluation
sees every patch); runs are evaluated often, so accuracy can be read at equal training time.
"""

from configs.synthetic_tiny import get_config  # noqa: F401  (the config every run starts from)

DROPOUT = [0.0, 0.5, 0.75]


def sweep(add):
    for p in DROPOUT:
        add(patch_dropout=p)
