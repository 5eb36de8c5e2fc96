"""The main job: a tiny CLIP trained from scratch on the embedded synthetic dataset (`clip_synthetic`).

    python -m clip_jax.train --config configs/synthetic_tiny.py --workdir runs/synthetic_tiny \
        --config.data.data_dir=runs/tensorflow_datasets
    python -m clip_jax.train --config configs/synthetic_tiny.py:steps=1000,patch=4,loss=sigmoid ...

The argument after ':' sets the variables of `get_config` (clip_jax.train.config.parse_arg): steps,
batch, lr, warmup, loss, width, layers, patch (image patch size), image_size.
"""

import ml_collections

from clip_jax.data import default_data_config
from clip_jax.train.config import default_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg,
        steps=600,
        batch=256,
        lr=1e-3,
        warmup=50,
        loss="softmax",
        width=128,
        layers=3,
        patch=8,
        image_size=32,
    )
    c = default_config()
    with c.ignore_type():
        # 32x32 inputs cut into 16 patches of 8x8, batch 256 for 600 steps: colour is learned in ~100
        # steps, shape (~3.5x chance) by the end. Chosen by configs/sweeps/main_recipe.py (results in
        # experiments/ablations/main_recipe): at an equal number of images a larger batch learned shape
        # faster than more steps of batch 128 (the extra negatives are mostly same-colour pairs); 4x4 patches,
        # larger images, a wider or deeper model, a higher lr or the sigmoid loss were all behind.
        # The longest caption is 16 tokens, so 20 fit them all. A sigmoid loss needs the logit bias
        # (SigLIP's init, -10).
        c.model = ml_collections.ConfigDict(
            {
                "embed_dim": a.width,
                "vision": {
                    "image_size": a.image_size,
                    "patch_size": a.patch,
                    "width": a.width,
                    "layers": a.layers,
                    "head_width": 32,
                },
                "text": {"context_length": 20, "width": a.width, "heads": a.width // 32, "layers": a.layers},
                **({"init_logit_bias": -10.0} if a.loss == "sigmoid" else {}),
            }
        )
    c.loss = a.loss
    c.batch_size = a.batch
    c.total_steps = a.steps
    c.warmup_steps = min(a.warmup, a.steps)
    c.lr = a.lr
    c.weight_decay = 0.1
    c.log_every = 25
    c.checkpoint_every = 100
    c.data = default_data_config()
    c.data.source = "synthetic"
    c.data.name = "default"
    c.data.shuffle_buffer = 6000
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default; overridable
    c.eval_every = 100
    c.evals.shape = {"type": "zeroshot", "dataset": "clip_synthetic", "task": "shape", "max_batches": 4}
    c.evals.color = {"type": "zeroshot", "dataset": "clip_synthetic", "task": "color", "max_batches": 4}
    return c
