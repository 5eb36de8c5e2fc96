"""The default training config: every field a run reads (see clip_jax/train/config.py for the schema).

    python -m clip_jax.train --config configs/default.py --workdir DIR \
        --config.data.source=webdataset --config.data.path='/data/{00000..41455}.tar'
    python -m clip_jax.train --config configs/default.py:model=ViT-B-16,batch=4096,steps=20000 --workdir DIR ...
    python -m clip_jax.train --config configs/default.py:data=random,steps=20 --workdir DIR   # speed only

It names no training data: a run stops at start asking for config.data.source (synthetic, tfds, tfrecord,
webdataset, folder) and that source's fields (clip_jax/data/image_text.py DATA_CONFIG_DEFAULTS), or
`data=random` for the noise batches of speed benchmarks and tests (nothing is learned).

The argument after ':' sets the variables below (clip_jax.train.config.parse_arg): model, batch, steps, lr,
loss, data (a source name; `random` gives the schema's noise section, with its `distinct_batches` field);
warmup_steps is at most the run's steps. Every other field is set with --config.<field>=<value>.

The learning-rate schedule is --config.schedule (cosine, const, const-cooldown, rsqrt, linear; with
cooldown_steps, cooldown_power, rsqrt_timescale, end_lr_ratio); a cooldown branch of a constant-lr run is
--config.branch_from=PARENT_WORKDIR[/checkpoints/STEP] --config.schedule=const-cooldown with
--config.total_steps and --config.cooldown_steps of the branch (`--help_config` lists every field).
A validation loss on held-out pairs is an evaluation: config.evals.val = {"type": "contrastive", "dataset": ...,
"batch_size": 256} (the run's loss and in-batch top-1 at that fixed batch; clip_jax/eval/contrastive.py).
Distillation from a frozen teacher (open_clip's --distill-model): --config.distill.teacher=WEIGHTS_OR_RUN,
with --config.distill.teacher_model=NAME when the weights cannot name it and --config.distill.weight.
"""

import ml_collections

from clip_jax.train.config import RANDOM_SOURCE, default_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default_config()
    a = parse_arg(arg, model=c.model, batch=c.batch_size, steps=c.total_steps, lr=c.lr, loss=c.loss, data="")
    c.model, c.batch_size, c.total_steps, c.lr, c.loss = a.model, a.batch, a.steps, a.lr, a.loss
    # As configs/synthetic_tiny.py: a short run (steps=50) still validates, warming up over all of it.
    c.warmup_steps = min(c.warmup_steps, a.steps)
    if a.data == RANDOM_SOURCE:
        return c  # the schema's data section: noise batches
    # Every field of the real sources, so that --config.data.<field> can set each; the source is left
    # for the user to name (validate_config's error says how) rather than training on noise unasked.
    from clip_jax.data import default_data_config  # tensorflow: only for a real source

    c.data = default_data_config()
    c.data.source = a.data
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default; overridable
    return c
