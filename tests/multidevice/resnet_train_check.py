"""The trainer on a ResNet tower (config.model 'tiny-rn'): 1 vs 8 simulated CPU devices, and a resumed run;
prints JSON for tests/test_resnet.py.

Run as a script (its own process): XLA_FLAGS must be set before jax is imported. It trains 3 steps of
`clip_jax.train.train` (the real trainer: its loop, checkpoints and data) on one device and on a (data=8)
mesh, records the losses of each step and the BatchNorm running statistics at the end; resumes a copy of
the one-device run from its step-2 checkpoint; and computes, at the initial params, the loss with
BatchNorm statistics taken over each device's 2 rows instead of the global batch (the mistake that
per-device statistics would be), to show the comparison can tell, and the gradient's L1 norm there.
"""

import os

# -O0: the check compares computations with each other, never with optimised code; it halves compiles.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
# tensorboardX imports torch when it is installed (seconds of CPU); the trainer uses nothing of it.
import sys  # noqa: E402

sys.modules["torch"] = None

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clip_jax.models import CLIP, get_model_config, init_params  # noqa: E402
from clip_jax.models.resnet import batch_stats_of  # noqa: E402
from clip_jax.sharding import dict_key_path  # noqa: E402
from clip_jax.train.config import default_config  # noqa: E402
from clip_jax.train.loop import train  # noqa: E402
from clip_jax.train.losses import contrastive_loss  # noqa: E402
from clip_jax.train.random_batches import RandomBatches  # noqa: E402
from clip_jax.train.step import init_rngs, make_loss_and_grads  # noqa: E402

STEPS = 3
BATCH = 16  # 2 rows per device on the 8-device mesh
DEVICE_GROUPS = 8


def config():
    c = default_config()
    c.model = "tiny-rn"
    c.batch_size = BATCH
    c.total_steps = STEPS
    c.checkpoint_every = 2  # step 2, which the resumed run starts from, and the final step 3
    c.keep_checkpoints = STEPS
    c.log_every = 1
    c.lr = 1e-4
    c.warmup_steps = 1
    return c


def losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def flat(tree) -> dict:
    return {dict_key_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def initial_loss_checks(cfg) -> tuple[float, float]:
    """At the initial params and the first batch: the gradient's L1 norm (it turns Adam's parameter drift
    into a loss drift, first order), and the relative change of the loss when each group of 2 rows is
    normalised by its own statistics."""
    model = CLIP(cfg)
    params = init_params(model, init_rngs(0)[0])
    batch = next(RandomBatches(global_batch_size=BATCH, image_size=cfg.vision.image_size, context_length=77))
    rng = jax.random.key(0)
    global_loss, grads = jax.jit(make_loss_and_grads(model))(params, batch, rng)
    grad_l1 = float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads)))

    def features(images, tokens):
        img, txt = model.apply({"params": params}, images, tokens, train=True, method=_encode_both)
        return img / jnp.linalg.norm(img, axis=-1, keepdims=True), txt / jnp.linalg.norm(
            txt, axis=-1, keepdims=True
        )

    groups = lambda x: x.reshape(DEVICE_GROUPS, -1, *x.shape[1:])  # noqa: E731
    img, txt = jax.jit(jax.vmap(features))(groups(batch["image"]), groups(batch["text"]))
    scale = jnp.exp(params["logit_scale"])
    local = contrastive_loss("softmax", img.reshape(BATCH, -1), txt.reshape(BATCH, -1), scale, None)
    return grad_l1, float(abs(local - global_loss) / abs(global_loss))


def _encode_both(module, images, tokens, train=False):
    return module.encode_image(images, train=train), module.encode_text(tokens)


def main() -> None:
    cfg = get_model_config("tiny-rn")
    base = Path(tempfile.mkdtemp(prefix="resnet_train_check_"))
    # A persistent compilation cache: the resumed run then reuses the one-device run's compiled programs.
    jax.config.update("jax_compilation_cache_dir", str(base / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        one = train(config(), str(base / "one"), devices=jax.devices()[:1])
        eight = train(config(), str(base / "eight"), devices=jax.devices())
        # The one-device run resumed from its step-2 checkpoint.
        shutil.copytree(base / "one" / "checkpoints", base / "resumed" / "checkpoints")
        shutil.rmtree(base / "resumed" / "checkpoints" / str(STEPS))
        resumed = train(config(), str(base / "resumed"), devices=jax.devices()[:1])
        s1, s8 = flat(batch_stats_of(one.params)), flat(batch_stats_of(eight.params))
        # Each statistic's error in its own scale: a mean's in units of the channel's standard deviation
        # (a mean near 0 has no relative precision), a variance's relative to it.
        stat_errors = {}
        for k, v in s1.items():
            scale = np.sqrt(s1[k.replace("running_mean", "running_var")]) if k.endswith("mean") else v
            stat_errors[k] = float(np.max(np.abs(s8[k] - v) / scale))
        grad_l1, local_error = initial_loss_checks(cfg)
        a, b = flat(jax.device_get(one)), flat(jax.device_get(resumed))
        out = {
            "devices": jax.device_count(),
            "steps": STEPS,
            "losses": {
                "1": [losses(base / "one")[s] for s in range(1, STEPS + 1)],
                "8": [losses(base / "eight")[s] for s in range(1, STEPS + 1)],
            },
            "stat_errors": stat_errors,
            "resumed_from": min(losses(base / "resumed")) - 1,
            "resumed_equal": a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a),
            "local_bn_loss_error": local_error,
            "grad_l1": grad_l1,
            "lr": config().lr,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
