"""Ablation: softmax (CLIP) vs sigmoid (SigLIP) loss over batch sizes, on the embedded synthetic dataset.

    python -m clip_jax.sweep --config configs/sweeps/loss_batch.py --workdir runs/loss_batch --parallel 2 \
        --set data.data_dir=runs/tensorflow_datasets
    python -m clip_jax.train --config configs/sweeps/loss_batch.py:loss=sigmoid,batch=64 --workdir DIR  # one run

SigLIP (Zhai et al. 2023, Fig. 2) finds the sigmoid loss ahead of softmax at small batch sizes, the two
meeting as the batch grows. Each run is configs/synthetic_tiny.py with its loss and batch; the argument
after ':' (FILE:steps=...,...) is passed on to it for every run.
"""

from clip_jax.sweep import product
from configs.synthetic_tiny import get_config  # noqa: F401  (the config every run starts from)

BATCHES = [32, 64, 128, 256]


def sweep(add):
    for run in product(**{"arg.loss": ["softmax", "sigmoid"], "arg.batch": BATCHES}):
        add(**run)
