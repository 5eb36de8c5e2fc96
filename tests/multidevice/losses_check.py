"""Sharded vs dense contrastive losses on 8 simulated CPU devices; prints JSON for tests/test_losses.py.

Run as a script (its own process): XLA_FLAGS must be set before jax is imported.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from benchmarks.bench_loss_memory import measure  # noqa: E402
from clip_jax.train.losses import contrastive_loss  # noqa: E402

NAMES = ("data", "fsdp", "tensor")
MESHES = {"data=8": (8, 1, 1), "fsdp=8": (1, 8, 1), "data=2,fsdp=2,tensor=2": (2, 2, 2)}
BATCH_AXES = ("data", "fsdp")


def make_mesh(shape):
    return jax.make_mesh(shape, NAMES, axis_types=(jax.sharding.AxisType.Auto,) * len(NAMES))


def features(batch, embed, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        x = rng.standard_normal((batch, embed)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def loss_and_grads(kind, mesh):
    """jit(value_and_grad) of the loss w.r.t. img, txt, scale, bias (bias unused by softmax)."""

    def f(img, txt, scale, bias):
        return contrastive_loss(kind, img, txt, scale, bias, mesh=mesh, batch_axes=BATCH_AXES)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))


def max_rel_err(a, b):
    """max |a - b| / max |b|: tolerant of tiny entries, sensitive to any misplaced row."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def parity(batch=64, embed=32, dtype=np.float32, meshes=MESHES):
    """Sharded loss and grads vs the dense loss on the same (possibly bf16) features."""
    img, txt = (jnp.asarray(x, dtype) for x in features(batch, embed, seed=0))
    scale, bias = jnp.float32(12.3), jnp.float32(-4.5)
    results = []
    for kind in ("softmax", "sigmoid"):
        ref_loss, ref_grads = loss_and_grads(kind, None)(img, txt, scale, bias)
        for name, shape in meshes.items():
            mesh = make_mesh(shape)
            feat = NamedSharding(mesh, P(BATCH_AXES, None))
            args = (jax.device_put(img, feat), jax.device_put(txt, feat), scale, bias)
            loss, grads = loss_and_grads(kind, mesh)(*args)
            errs = {"loss": max_rel_err(loss, ref_loss)}
            for key, g, rg in zip(("img", "txt", "scale", "bias"), grads, ref_grads, strict=True):
                errs[key] = max_rel_err(g, rg)
            results.append(
                {
                    "kind": kind,
                    "mesh": name,
                    "dtype": np.dtype(dtype).name,
                    "loss_dtype": str(loss.dtype),
                    "loss": float(loss),
                    "ref_loss": float(ref_loss),
                    "errs": errs,
                }
            )
    return results


def memory(batch=4096, embed=512):
    """Compiled per-device memory of dense (replicated features) vs sharded loss + grad on data=8."""
    mesh = make_mesh(MESHES["data=8"])
    return [
        measure(kind, variant, batch, embed, mesh)
        for kind in ("softmax", "sigmoid")
        for variant in ("dense-replicated", "sharded")
    ]


def main():
    bf16_mesh = {"data=2,fsdp=2,tensor=2": MESHES["data=2,fsdp=2,tensor=2"]}
    out = {
        "devices": jax.device_count(),
        "parity": parity(),
        "parity_bf16": parity(dtype=jnp.bfloat16, meshes=bf16_mesh),
        "memory": memory(),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
