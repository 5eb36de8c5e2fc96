"""Example: learning rate and warmup moved together (zipped) over two seeds, and one run without any
evaluation (DROP removes config entries; `evals.*` all of config.evals).

    python -m clip_jax.sweep --config configs/sweeps/lr_warmup.py --workdir runs/lr_warmup --dry-run
    python -m clip_jax.sweep --config configs/sweeps/lr_warmup.py:steps=100 --workdir runs/lr_warmup \
        --drop evals.shape --set data.data_dir=runs/tensorflow_datasets --parallel 2

`--set` / `--drop` on the launcher's command line apply to every run and stay out of the run names.
"""

from clip_jax.sweep import DROP, product, zipped
from configs.synthetic_tiny import get_config  # noqa: F401


def sweep(add):
    for run in product(zipped(lr=[1e-3, 5e-4, 2.5e-4], warmup_steps=[25, 50, 100]), seed=[0, 1]):
        add(**run)
    add(lr=1e-3, warmup_steps=25, seed=0, **{"evals.*": DROP, "eval_every": 0})
