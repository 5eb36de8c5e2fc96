"""Per-device memory of the dense vs sharded contrastive loss + grad, from XLA's compiled memory analysis.

    python benchmarks/bench_loss_memory.py      # 8 simulated CPU devices, global batch 4096 and 32768

Nothing runs: each variant is only lowered and compiled, and `memory_analysis()` of the per-device SPMD
program is read. "total" = temp + argument + output bytes on one device. Variants:
  dense-replicated  dense loss jitted on the mesh with replicated features: every device builds B x B logits
  dense-sharded-in  dense loss jitted with batch-sharded features: XLA's SPMD partitioner picks the layout
  sharded           shard_map loss (local rows vs all-gathered columns), batch-sharded features
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Must happen before jax is imported; importers (tests) set up their own devices.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from clip_jax.train.losses import contrastive_loss  # noqa: E402

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
VARIANTS = ("dense-replicated", "dense-sharded-in", "sharded")
MiB = 2**20


def default_mesh() -> jax.sharding.Mesh:
    """All devices on the `data` axis (fsdp and tensor of size 1)."""
    shape = (jax.device_count(), 1, 1)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def measure(kind: str, variant: str, batch: int, embed: int, mesh: jax.sharding.Mesh) -> dict:
    """Compile jit(value_and_grad(loss)) w.r.t. features, scale and bias; return per-device byte counts."""
    dense = variant.startswith("dense")

    def loss(img, txt, scale, bias):
        return contrastive_loss(
            kind, img, txt, scale, bias, mesh=None if dense else mesh, batch_axes=BATCH_AXES
        )

    feat_spec = P() if variant == "dense-replicated" else P(BATCH_AXES, None)
    feat = jax.ShapeDtypeStruct((batch, embed), jnp.float32, sharding=NamedSharding(mesh, feat_spec))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    stats = step.lower(feat, feat, scalar, scalar).compile().memory_analysis()
    temp, arg, out = stats.temp_size_in_bytes, stats.argument_size_in_bytes, stats.output_size_in_bytes
    return {
        "kind": kind,
        "variant": variant,
        "batch": batch,
        "embed": embed,
        "devices": mesh.size,
        "temp": temp,
        "argument": arg,
        "output": out,
        "total": temp + arg + out,
    }


def run(batches: tuple[int, ...] = (4096, 32768), embed: int = 512) -> list[dict]:
    """Every (loss kind, variant, global batch) on the default mesh; one dict per compiled program."""
    mesh = default_mesh()
    return [
        measure(kind, variant, batch, embed, mesh)
        for batch in batches
        for kind in ("softmax", "sigmoid")
        for variant in VARIANTS
    ]


def to_markdown(rows: list[dict]) -> str:
    """Table in MiB per device, with the ratio of each variant's total to dense-replicated's."""
    base = {(r["kind"], r["batch"]): r["total"] for r in rows if r["variant"] == "dense-replicated"}
    lines = [
        "| loss | global batch | variant | temp MiB | args MiB | out MiB | total MiB | vs dense-replicated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            r["total"] / base[(r["kind"], r["batch"])] if (r["kind"], r["batch"]) in base else float("nan")
        )
        lines.append(
            f"| {r['kind']} | {r['batch']} | {r['variant']} | {r['temp'] / MiB:.1f} | {r['argument'] / MiB:.1f} "
            f"| {r['output'] / MiB:.1f} | {r['total'] / MiB:.1f} | {ratio:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    rows = run()
    print(
        f"per-device memory of loss + grad, embed {rows[0]['embed']}, {rows[0]['devices']} devices "
        f"({jax.devices()[0].platform}), float32 features\n"
    )
    print(to_markdown(rows))
