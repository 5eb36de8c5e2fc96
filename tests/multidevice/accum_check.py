"""Accumulated vs full-batch gradients on 1 and 8 simulated CPU devices; prints JSON for
tests/test_train_step.py.

Run as a script (its own process): XLA_FLAGS must be set before jax is imported. For each loss and
accum_steps 2 and 4 it compares the gradients of `make_loss_and_grads` with micro-batches against the
one-pass full-batch gradients on one device (dense loss): once on one device, once on a (data=8) mesh
with the sharded loss. Errors are per parameter: max |accumulated - full| / max |full|.
"""

import os

# -O0: the check compares two computations with each other, never with optimised code; it halves compiles.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from clip_jax.models import CLIP, init_params  # noqa: E402
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig  # noqa: E402
from clip_jax.sharding import dict_key_path  # noqa: E402
from clip_jax.train.step import make_loss_and_grads  # noqa: E402

# Small enough to compile quickly, with every kind of parameter the real towers have.
CFG = CLIPConfig(
    32,
    VisionConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
    TextConfig(context_length=8, vocab_size=100, width=32, heads=2, layers=1),
)
BATCH = 32  # 4 micro-batches of 8 rows: one row per device on the 8-device mesh


def batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((BATCH, 16, 16, 3)).astype(np.float32)
    text = rng.integers(1, 99, size=(BATCH, 8)).astype(np.int32)
    return {"image": images, "text": text}


def rel_errors(got: dict, want: dict) -> dict:
    flat = lambda t: {dict_key_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}  # noqa: E731
    got, want = flat(got), flat(want)
    return {k: float(np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-30)) for k in want}


def main() -> None:
    results = []
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rng = jax.random.PRNGKey(1)
    for loss in ("softmax", "sigmoid"):
        cfg = CFG if loss == "softmax" else CFG.replace(init_logit_bias=-10.0)
        model = CLIP(cfg)
        params = jax.device_get(init_params(model, jax.random.PRNGKey(0)))
        data = batch(2)
        full_loss, full = jax.jit(make_loss_and_grads(model, loss=loss))(params, data, rng)
        for accum in (2, 4):
            one = jax.jit(make_loss_and_grads(model, loss=loss, accum_steps=accum))
            value, grads = one(params, data, rng)
            results.append(
                {"loss": loss, "accum": accum, "devices": 1, "loss_value": [float(value), float(full_loss)]}
                | {"errs": rel_errors(grads, full)}
            )
            with jax.set_mesh(mesh):
                sharded = jax.jit(
                    make_loss_and_grads(model, loss=loss, mesh=mesh, accum_steps=accum),
                    in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P(("data", "fsdp"))), None),
                )
                value, grads = sharded(params, data, rng)
            results.append(
                {"loss": loss, "accum": accum, "devices": 8, "loss_value": [float(value), float(full_loss)]}
                | {"errs": rel_errors(jax.device_get(grads), full)}
            )
    json.dump({"devices": jax.device_count(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
