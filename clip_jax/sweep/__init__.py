"""Sweeps: a config file's `sweep(add)` next to its `get_config(arg)` (big_vision's idiom), launched
through submitit on this machine or on Slurm, summarised as tables and plots.

    python -m clip_jax.sweep --config configs/sweeps/loss_batch.py --workdir runs/loss_batch --parallel 2

Modules: `spec` (runs, names, product / zipped; overrides and DROP are clip_jax.train.overrides), `job`
(one run as a submitit job), `executors` (local and Slurm), `launcher` (plan, submit, watch), `status`
(each run's state on disk), `results` and `plots` (summary.csv / summary.md, PNGs), `cli`.
"""

from clip_jax.sweep.spec import product, zipped
from clip_jax.train.overrides import DROP

__all__ = ["DROP", "product", "zipped"]
