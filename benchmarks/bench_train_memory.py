"""Per-device memory of the sharded CLIP train step at scale, from XLA's compiled memory analysis.

    python benchmarks/bench_train_memory.py            # ViT-B-16, global batch 32,768, 8 simulated devices
    python benchmarks/bench_train_memory.py --quick    # global batch 4,096, fsdp mesh only
    python benchmarks/bench_train_memory.py --model ViT-B-32 --batch 16384 --remat dots --no-scan

Nothing runs and nothing is allocated: the train step is built exactly as `clip_jax.train` builds it
(state shapes from `jax.eval_shape`, parameter shardings from the logical axis names via
`clip_jax.sharding.logical_to_mesh_sharding`, the TrainState's via `shardings_by_param_path`, batch split
over data x fsdp, state donated), lowered on abstract arguments and compiled, and `memory_analysis()` of
the per-device SPMD program is read. Rows: each mesh x each loss,
  sharded  the shard_map loss: every device builds only its [b, B] block of logits,
  dense    the reference loss on batch-sharded features; XLA's partitioner picks the layout.
At this batch one would train with scanned layers and full rematerialisation (the defaults here): only
each block's input is kept for the backward pass. "peak" = arguments + outputs - aliased (donated)
+ temporaries, per device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEVICES = 8
if __name__ == "__main__":
    # Must happen before jax is imported; an importer (run_all's worker, a test) sets up its own devices.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from clip_jax import sharding  # noqa: E402
from clip_jax.checkpoint import abstract_like  # noqa: E402
from clip_jax.models import CLIP, get_model_config  # noqa: E402
from clip_jax.train.optim import make_optimizer  # noqa: E402
from clip_jax.train.step import init_train_state, make_train_step  # noqa: E402

# (data, fsdp, tensor)
MESHES = {"fsdp=8": (1, 8, 1), "data=8": (8, 1, 1)}
LOSSES = ("sharded", "dense")
GiB = 2**30


def compile_train_step(
    model_name: str,
    global_batch: int,
    mesh_shape: tuple[int, int, int],
    loss_impl: str,
    remat_policy: str = "full",
    scan: bool = True,
    dtype: str = "float32",
    accum_steps: int = 1,
) -> tuple[jax.stages.Compiled, float]:
    """The compiled (never run) sharded train step and its lower + compile seconds."""
    mesh = sharding.make_mesh(*mesh_shape)
    cfg = get_model_config(model_name)
    model = CLIP(cfg, dtype=jnp.dtype(dtype), scan=scan, remat_policy=remat_policy)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):

        def init_params(rng):
            img = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
            txt = jnp.zeros((1, cfg.text.context_length), jnp.int32)
            return model.init(rng, img, txt)["params"]

        boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
        param_shardings = sharding.logical_to_mesh_sharding(boxed, mesh)
        abstract_params = sharding.strip_boxes(boxed)
        tx, schedule = make_optimizer(abstract_params, lr=1e-3, total_steps=10_000, warmup_steps=1_000)
        abstract_state = jax.eval_shape(
            lambda p: init_train_state(p, tx, jax.random.PRNGKey(0)), abstract_params
        )
        state_shardings = sharding.shardings_by_param_path(abstract_state, param_shardings, mesh)
        batch_sharding = sharding.batch_sharding(mesh)
        size = cfg.vision.image_size
        batch = {
            "image": jax.ShapeDtypeStruct(
                (global_batch, size, size, 3), jnp.float32, sharding=batch_sharding
            ),
            "text": jax.ShapeDtypeStruct(
                (global_batch, cfg.text.context_length), jnp.int32, sharding=batch_sharding
            ),
        }
        step = make_train_step(
            model,
            tx,
            mesh=mesh if loss_impl == "sharded" else None,
            batch_axes=sharding.BATCH_AXES,
            accum_steps=accum_steps,
            schedule=schedule,
        )
        jitted = jax.jit(
            step,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=0,
        )
        start = time.perf_counter()
        compiled = jitted.lower(abstract_like(abstract_state, state_shardings), batch).compile()
        return compiled, time.perf_counter() - start


def measure(model_name: str, global_batch: int, mesh_name: str, loss_impl: str, **kwargs) -> dict:
    """Compile one variant and read its per-device memory analysis (bytes)."""
    compiled, compile_s = compile_train_step(model_name, global_batch, MESHES[mesh_name], loss_impl, **kwargs)
    m = compiled.memory_analysis()
    row = {
        "model": model_name,
        "global_batch": global_batch,
        "devices": jax.device_count(),
        "mesh": mesh_name,
        "loss": loss_impl,
        "remat_policy": kwargs.get("remat_policy", "full"),
        "scan": kwargs.get("scan", True),
        "dtype": kwargs.get("dtype", "float32"),
        "accum_steps": kwargs.get("accum_steps", 1),
        "argument": m.argument_size_in_bytes,
        "output": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "peak": m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes,
        "compile_s": compile_s,
    }
    print(
        f"  {model_name} B={global_batch} {mesh_name} {loss_impl}: peak {row['peak'] / GiB:.2f} GiB/device "
        f"(compile {compile_s:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return row


def run(
    quick: bool = False,
    model: str = "ViT-B-16",
    batch: int | None = None,
    meshes: tuple[str, ...] | None = None,
    remat_policy: str = "full",
    scan: bool = True,
    accum_steps: tuple[int, ...] | None = None,
) -> list[dict]:
    """Every (mesh, loss) on `DEVICES` devices, then the sharded loss on the first mesh with each of
    `accum_steps` micro-batches; one dict per compiled program."""
    if jax.device_count() != DEVICES:
        raise RuntimeError(
            f"needs {DEVICES} devices, found {jax.device_count()}: set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES} before jax is imported"
        )
    batch = batch or (4096 if quick else 32768)
    meshes = meshes or (("fsdp=8",) if quick else tuple(MESHES))
    accum_steps = accum_steps if accum_steps is not None else (() if quick else (8,))
    rows = [
        measure(model, batch, mesh, loss, remat_policy=remat_policy, scan=scan)
        for mesh in meshes
        for loss in LOSSES
    ]
    # What one would run at this batch on 80 GB accelerators: exact gradient accumulation over micro-batches.
    for k in accum_steps:
        rows += [
            measure(model, batch, meshes[0], loss, remat_policy=remat_policy, scan=scan, accum_steps=k)
            for loss in LOSSES
        ]
    return rows


def to_markdown(rows: list[dict]) -> str:
    """GiB per device; 'vs sharded' compares each row with the sharded-loss row of the same mesh and
    accumulation."""
    sharded_peak = {
        (r["mesh"], r["global_batch"], r["accum_steps"]): r["peak"] for r in rows if r["loss"] == "sharded"
    }
    lines = [
        "| model | global batch | mesh (8 devices) | loss | accum steps | args GiB | temp GiB | peak GiB/device "
        "| vs sharded | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = sharded_peak.get((r["mesh"], r["global_batch"], r["accum_steps"]))
        rel = f"{r['peak'] / base:.2f}x" if base else ""
        lines.append(
            f"| {r['model']} | {r['global_batch']:,} | {r['mesh']} | {r['loss']} | {r['accum_steps']} "
            f"| {r['argument'] / GiB:.2f} "
            f"| {r['temp'] / GiB:.2f} | {r['peak'] / GiB:.2f} | {rel} | {r['compile_s']:.0f} |"
        )
    if rows:
        r = rows[0]
        lines.append(
            f"\n{r['dtype']}, remat_policy={r['remat_policy']}, scan={r['scan']}, AdamW state sharded like the "
            "params; peak = args + outputs - donated + temporaries (XLA memory_analysis, CPU backend).\n"
            "The peak is reached in the towers' backward pass, after the loss's logits are freed; with batch-"
            "sharded features XLA also partitions the dense loss by rows, so the two losses differ here by "
            "less than their [B/8, B] logit blocks. The loss alone, dense vs sharded, is in the loss-memory "
            "section."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="global batch 4,096, fsdp mesh only")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 32768)")
    parser.add_argument("--meshes", default=None, help=f"comma list of {','.join(MESHES)}")
    parser.add_argument("--remat", default="full", help="remat policy (none, full, dots, dots_no_batch)")
    parser.add_argument("--no-scan", action="store_true", help="unrolled layers instead of nn.scan")
    parser.add_argument(
        "--accum-steps", default=None, help="comma list of extra accumulation rows (default 8)"
    )
    args = parser.parse_args()
    rows = run(
        quick=args.quick,
        model=args.model,
        batch=args.batch,
        meshes=tuple(args.meshes.split(",")) if args.meshes else None,
        remat_policy=args.remat,
        scan=not args.no_scan,
        accum_steps=tuple(int(k) for k in args.accum_steps.split(",") if k)
        if args.accum_steps is not None
        else None,
    )
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
