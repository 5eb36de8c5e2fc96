"""Training: the config schema (`config`), the optimizer (`optim`), the contrastive losses (`losses`), the
jitted train step (`step`), the loop with logging, evaluation and checkpoints (`loop`), and the random
batches of benchmarks and tests (`random_batches`).

Command line: `python -m clip_jax.train --config configs/synthetic_tiny.py --workdir runs/tiny`.
"""
