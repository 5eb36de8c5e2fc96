"""Throughput and MFU of the clip_jax train step on one accelerator, with open_clip (PyTorch) as reference.

Needs only jax, flax, optax and numpy (no tensorflow): run from the repository root,

    PYTHONPATH=. python benchmarks/gpu_train_step.py                      # ViT-B-16, bf16, defaults below
    PYTHONPATH=. python benchmarks/gpu_train_step.py --batch 1024 --attention xla --remat dots --no-scan
    PYTHONPATH=. python benchmarks/gpu_train_step.py --reference          # + open_clip AMP bf16, same batch
    PYTHONPATH=. python benchmarks/gpu_train_step.py --sweep --sweep-batch 512,1024 --sweep-attention xla,cudnn_padded
    PYTHONPATH=. python benchmarks/gpu_train_step.py --sweep --variants 'batch=512;batch=768,ln=custom_vjp'
    PYTHONPATH=. python benchmarks/gpu_train_step.py --model tiny --batch 8 --steps 2   # CPU smoke test

The step is the project's own: `clip_jax.train.step.make_train_step` (both towers, dense softmax loss,
backward, AdamW from `clip_jax.train.optim.make_optimizer`, logit-scale clamp) around
`CLIP(cfg, dtype=bfloat16, param_dtype=float32, scan=..., remat_policy=..., attention_impl=...)`, jitted
with the train state donated. Batches are synthetic (random normal images, random token ids ending in
EOT), created once on the device. Attention defaults to cuDNN's fused kernel with the sequences padded
to a multiple of 8 by the model itself (jax's cuDNN path rejects the odd lengths 197 and 77 in training;
`clip_jax.models.transformer.padded_attention`). Compile time (trace +
lower + XLA compile, autotuning included) is reported apart from the step time, which is the median
over the timed steps after warm-up, each step waited for with `block_until_ready`.

MFU = model FLOPs per step / median step time / the device's peak dense bf16 FLOP/s. Model FLOPs are
counted by `train_flops` (benchmarks/flops.py) from the exact matmul shapes; rematerialised
recomputation is not counted. A sweep (benchmarks/gpu_sweep.py) runs every variant in its own process
(isolates out-of-memory failures and XLA_FLAGS) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# clip_jax and the benchmarks package live in the repository root, one level up from this file; the
# commands in RESULTS_GPU.md run this file with and without PYTHONPATH=$PWD.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Standard library only, like this file's top level: jax is imported when a measurement starts.
from benchmarks.common import append_json_line, emit_result, fmt_optional, run_child  # noqa: E402
from benchmarks.flops import peak_flops, train_flops  # noqa: E402
from benchmarks.gpu_sweep import XLA_FLAG_SETS, run_sweep  # noqa: E402

REMAT_CHOICES = ("none", "full", "dots", "dots_no_batch")


# --------------------------------------------------------------------------------------------------
# One measurement (this process)
# --------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build model, state and batch on the default device; compile; time `args.steps` steps."""
    import jax
    import jax.numpy as jnp

    from clip_jax.models import CLIP, get_model_config, init_params
    from clip_jax.train.optim import make_optimizer
    from clip_jax.train.step import init_train_state, make_train_step

    cfg = get_model_config(args.model)
    device = jax.devices()[0]
    if args.attention == "auto":
        # cuDNN's fused attention (the model pads odd sequence lengths for it): "xla" was 1.4x slower on
        # the H100 (benchmarks/RESULTS_GPU.md).
        args.attention = "cudnn" if device.platform == "gpu" else "heads_major"
    impl = None if args.attention == "heads_major" else args.attention
    if args.ln == "custom_vjp":
        from benchmarks.model_variants import install_custom_vjp_layernorm

        install_custom_vjp_layernorm()
    if args.attention == "cudnn_padded":
        # Alias kept so the commands recorded in RESULTS_GPU.md still run: the model itself now pads odd
        # sequence lengths for cuDNN (clip_jax.models.transformer.padded_attention).
        impl = "cudnn"
    dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype]
    model = CLIP(
        cfg,
        dtype=dtype,
        param_dtype=jnp.float32,
        scan=args.scan,
        remat_policy=args.remat,
        attention_impl=impl,
    )
    rng = jax.random.PRNGKey(0)
    params = jax.jit(lambda r: init_params(model, r))(rng)
    tx, schedule = make_optimizer(params, lr=5e-4, total_steps=10_000, warmup_steps=100, weight_decay=0.2)
    state = jax.jit(lambda p: init_train_state(p, tx, jax.random.PRNGKey(1)))(params)
    del params

    def make_batch(key: jax.Array) -> dict[str, jax.Array]:
        k_img, k_txt = jax.random.split(key)
        size, ctx = cfg.vision.image_size, cfg.text.context_length
        images = jax.random.normal(k_img, (args.batch, size, size, 3), jnp.float32)
        # Ids below EOT, then EOT (the largest id, where the text tower pools) in the last position.
        tokens = jax.random.randint(k_txt, (args.batch, ctx), 1, cfg.text.vocab_size - 1, jnp.int32)
        tokens = tokens.at[:, -1].set(cfg.text.vocab_size - 1)
        return {"image": images, "text": tokens}

    batch = jax.jit(make_batch)(jax.random.PRNGKey(2))
    jax.block_until_ready((state, batch))

    step = jax.jit(make_train_step(model, tx, schedule=schedule), donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics if args.warmup else state)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    loss = float(metrics["loss"])
    if args.profile:
        # A trace of a few steps; its .xplane.pb gives per-kernel device times (xprof / TensorBoard).
        jax.profiler.start_trace(args.profile)
        for _ in range(args.profile_steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
    if args.dump_hlo:
        Path(args.dump_hlo).write_text(compiled.as_text())

    flops = train_flops(cfg, args.batch, pooled_last=not args.scan)  # scanned layers compute every row
    median = statistics.median(times)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device.device_kind)
    result: dict[str, Any] = {
        "model": args.model,
        "batch": args.batch,
        "dtype": args.dtype,
        "attention": args.attention,
        "remat": args.remat,
        "scan": args.scan,
        "ln": args.ln,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "steps": args.steps,
        "lower_s": t1 - t0,
        "compile_s": t2 - t0,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "images_per_s": args.batch / median,
        "model_tflops_per_step": flops["train"] / 1e12,
        "achieved_tflops": flops["train"] / median / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops["train"] / median / peak if peak else None,
        "loss": loss,
        "loss_finite": math.isfinite(loss),
    }
    result.update(_compiled_stats(compiled, device))
    return result


def _compiled_stats(compiled: Any, device: Any) -> dict[str, Any]:
    """Memory figures of the compiled step and the device's peak usage (best effort, backend-dependent).

    (XLA's cost_analysis FLOP count is not reported: on GPU it leaves out cuBLAS/cuDNN library calls.)
    """
    out: dict[str, Any] = {}
    try:
        mem = compiled.memory_analysis()
        out["temp_gib"] = mem.temp_size_in_bytes / 2**30
        out["argument_gib"] = mem.argument_size_in_bytes / 2**30
    except Exception:
        pass
    try:
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    except Exception:
        pass
    return out


# --------------------------------------------------------------------------------------------------
# The open_clip reference and the output
# --------------------------------------------------------------------------------------------------


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """open_clip with AMP bf16 at the same model and batch, in its own process (its own GPU memory)."""
    script = Path(__file__).with_name("gpu_openclip_reference.py")
    cmd = [
        sys.executable,
        str(script),
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(max(args.warmup, 3)),
    ]
    if args.reference_compile:
        cmd.append("--compile")
    return run_child(cmd, dict(os.environ), timeout=args.child_timeout)


def print_result(r: dict[str, Any], ref: dict[str, Any] | None) -> None:
    """The report of one measurement, and of the open_clip reference where one ran."""
    mfu = "n/a (unknown peak; pass --peak-tflops)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    print(f"device            {r['device']} (jax {r['jax']})")
    print(
        f"config            {r['model']} {r['dtype']} batch={r['batch']} attention={r['attention']} "
        f"remat={r['remat']} scan={r['scan']} layernorm={r['ln']} XLA_FLAGS='{r['xla_flags']}'"
    )
    print(f"compile           {r['compile_s']:.1f} s (of which trace+lower {r['lower_s']:.1f} s)")
    print(
        f"step              median {1e3 * r['step_s_median']:.1f} ms over {r['steps']} steps "
        f"(min {1e3 * r['step_s_min']:.1f}, max {1e3 * r['step_s_max']:.1f}); loss {r['loss']:.4f}"
    )
    print(f"throughput        {r['images_per_s']:.1f} images/s")
    print(
        f"model FLOPs       {r['model_tflops_per_step']:.3f} TFLOP/step -> {r['achieved_tflops']:.1f} TFLOP/s; "
        f"peak memory {fmt_optional(r.get('peak_gib'), '.1f')} GiB"
    )
    print(f"MFU               {mfu} of {fmt_optional(r['peak_tflops'], '.1f')} TFLOP/s peak bf16")
    if ref is not None:
        if "error" in ref:
            print(f"open_clip         {ref['error']}: {ref.get('stderr_tail', '')}")
        else:
            print(
                f"open_clip         {ref['images_per_s']:.1f} images/s (torch {ref['torch']}, open_clip "
                f"{ref['open_clip']}, {ref['mode']}); ours/theirs = {r['images_per_s'] / ref['images_per_s']:.2f}x"
            )


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    # 512 was the fastest per image on an 80 GB H100 (1024 hits XLA's memory-pressure rematerialisation).
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="compute dtype")
    p.add_argument(
        "--attention",
        choices=("auto", "heads_major", "xla", "cudnn", "cudnn_padded"),
        default="auto",
        help="attention: heads_major = the model's default (clip_jax.models.transformer."
        "heads_major_attention), xla / cudnn = jax.nn.dot_product_attention's; auto = cudnn on GPUs, else "
        "heads_major (the model pads odd sequence lengths for cudnn); cudnn_padded is an alias of cudnn",
    )
    p.add_argument(
        "--ln",
        choices=("model", "custom_vjp"),
        default="model",
        help="model = the project's LayerNorm; custom_vjp = experiment (model_variants.LayerNormCustomVJP)",
    )
    p.add_argument("--remat", choices=REMAT_CHOICES, default="none")
    p.add_argument("--scan", action=argparse.BooleanOptionalAction, default=False, help="nn.scan the layers")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak bf16 TFLOP/s table")
    p.add_argument("--mem-fraction", default="0.92", help="XLA_PYTHON_CLIENT_MEM_FRACTION unless already set")
    p.add_argument("--reference", action="store_true", help="also time open_clip AMP bf16 at the same batch")
    p.add_argument("--reference-compile", action="store_true", help="reference under torch.compile")
    p.add_argument("--profile", default=None, help="write a jax.profiler trace of a few steps to this dir")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--dump-hlo", default=None, help="write the compiled step's HLO text to this file")
    p.add_argument("--json-out", default=None, help="append each result as a JSON line to this file")
    p.add_argument("--child-timeout", type=float, default=600.0)
    g = p.add_argument_group("sweep (each variant in its own process)")
    g.add_argument("--sweep", action="store_true")
    g.add_argument("--sweep-batch", default="512,1024")
    g.add_argument("--sweep-attention", default="xla,cudnn")
    g.add_argument("--sweep-remat", default="none")
    g.add_argument("--sweep-scan", default="0", help="comma list of 0/1")
    g.add_argument("--sweep-xla", default="default", help=f"comma list of {sorted(XLA_FLAG_SETS)}")
    g.add_argument(
        "--variants",
        default=None,
        help="explicit list instead of the grid: 'batch=1024,attention=cudnn_padded,remat=none;batch=2048,...' "
        "(keys batch, attention, remat, scan, flags; unset keys take the single-run options)",
    )
    g.add_argument("--max-minutes", type=float, default=1e9, help="start no new variant after this")
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Read when the first backend is created, so setting it here (before any jax call) is in time.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", args.mem_fraction)
    if args.sweep:
        run_sweep(args)
        return
    # The reference runs first, before this process's jax takes most of the device memory.
    ref = run_reference(args) if args.reference else None
    result = measure(args)
    if ref is not None:
        result["reference"] = ref
        if "images_per_s" in ref:
            result["ratio_vs_open_clip"] = result["images_per_s"] / ref["images_per_s"]
    print_result(result, ref)
    emit_result(result)
    if args.json_out:
        append_json_line(args.json_out, result)


if __name__ == "__main__":
    main()
