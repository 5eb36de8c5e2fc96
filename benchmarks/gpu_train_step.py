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
counted by `train_flops` below from the exact matmul shapes; rematerialised recomputation is not
counted. A sweep runs every variant in its own process (isolates out-of-memory failures and XLA_FLAGS)
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' datasheets, matched as substrings of
# jax's `device_kind` in this order (the PCIe/NVL parts before the generic H100 name, which is the SXM).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0e12),
    ("H100 NVL", 835.0e12),
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100", 989.4e12),  # "NVIDIA H100 80GB HBM3" = SXM5
    ("A100", 312.0e12),
    ("L40S", 362.0e12),
)

# Named XLA flag sets for the sweep (`--sweep-xla`); "default" adds nothing.
XLA_FLAG_SETS: dict[str, str] = {
    "default": "",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "cublaslt": "--xla_gpu_enable_cublaslt=true",
    "autotune0": "--xla_gpu_autotune_level=0",
}

REMAT_CHOICES = ("none", "full", "dots", "dots_no_batch")
RESULT_PREFIX = "RESULT_JSON "
# clip_jax lives in the repository root, one level up from this file.
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# FLOP count
# --------------------------------------------------------------------------------------------------


def transformer_forward_flops(
    tokens: int, width: int, mlp_width: int, layers: int, causal: bool, pooled_last: bool = True
) -> float:
    """Forward matmul FLOPs of `layers` pre-LN blocks for ONE sequence of `tokens` tokens.

    Per block (a multiply-add = 2 FLOPs; heads * head_dim = width in both towers):
      qkv projection   2 * T * W * 3W
      QK^T             2 * P * W       P = query/key pairs: T*T, or T*(T+1)/2 under the causal mask
      AV               2 * P * W
      out projection   2 * T * W * W
      MLP c_fc, c_proj 2 * T * W * M  each
    With `pooled_last` (the unrolled model; `Transformer(pool_rows=...)`), the last block computes one
    output row: qkv on all T rows, one query against T keys (P = T), out projection and MLP on 1 row.
    LayerNorm, softmax, GELU, bias and residual adds are not matmuls and are not counted.
    """

    def block(rows: int, pairs: float) -> float:
        return (
            2 * tokens * width * 3 * width
            + 2 * 2 * pairs * width
            + 2 * rows * width * (width + 2 * mlp_width)
        )

    full = block(tokens, tokens * (tokens + 1) / 2 if causal else tokens * tokens)
    if not pooled_last:
        return layers * full
    return (layers - 1) * full + block(1, tokens)


def train_flops(cfg: Any, batch: int, pooled_last: bool = True) -> dict[str, float]:
    """Model FLOPs of one train step of CLIP `cfg` on `batch` image-text pairs.

    Training = 3 x forward (forward, grad w.r.t. activations, grad w.r.t. weights) for every matmul,
    except the patch embedding, whose input is the pixels: it needs no input gradient, so 2 x forward.
    Token embedding is a gather (0 FLOPs). The loss logits image @ text.T are [B, E] x [E, B].
    """
    v, t, embed = cfg.vision, cfg.text, cfg.embed_dim
    patches = v.grid_size**2
    patch_embed = 2 * patches * (3 * v.patch_size**2) * v.width  # conv1 as a [P, 3p^2] x [3p^2, W] matmul
    vision = transformer_forward_flops(patches + 1, v.width, v.mlp_width, v.layers, False, pooled_last)
    vision += 2 * v.width * embed  # ln_post(class token) @ proj
    text = transformer_forward_flops(t.context_length, t.width, t.mlp_width, t.layers, True, pooled_last)
    text += 2 * t.width * embed  # EOT token @ text_projection
    logits = 2 * batch * batch * embed
    forward = batch * (patch_embed + vision + text) + logits
    total = 3 * (batch * (vision + text) + logits) + 2 * batch * patch_embed
    return {"forward": forward, "train": total, "per_image_train": total / batch}


def peak_flops(device_kind: str) -> float | None:
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


# --------------------------------------------------------------------------------------------------
# Experiment: cuDNN flash attention at odd sequence lengths
# --------------------------------------------------------------------------------------------------


def install_custom_vjp_layernorm() -> None:
    """EXPERIMENT, not the project's code path: LayerNorm with a hand-written backward pass.

    The profile of the project's step showed LayerNorm's backward (autodiff through the two-pass fp32
    mean/variance) as the largest non-matmul cost. This keeps the forward bit-identical and saves only
    the input, mean and 1/std; the backward is the closed form
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * scale,
    with dscale = sum(dy * xhat), dbias = sum(dy). The modules' names and parameters are unchanged.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import clip_jax.models.text as text_mod
    import clip_jax.models.transformer as tr
    import clip_jax.models.vit as vit_mod

    @jax.custom_vjp
    def layer_norm(x, scale, bias):
        return _fwd(x, scale, bias)[0]

    def _fwd(x, scale, bias):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + tr.LN_EPS)
        y = centred * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y, (x, mean, rstd, scale, bias)

    def _bwd(res, dy):
        x, mean, rstd, scale, bias = res
        dy = dy.astype(jnp.float32)
        xhat = (x.astype(jnp.float32) - mean) * rstd
        axes = tuple(range(dy.ndim - 1))
        g = dy * scale.astype(jnp.float32)
        dx = rstd * (
            g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
        )
        dscale = jnp.sum(dy * xhat, axis=axes).astype(scale.dtype)
        dbias = jnp.sum(dy, axis=axes).astype(bias.dtype)
        return dx.astype(x.dtype), dscale, dbias

    layer_norm.defvjp(_fwd, _bwd)

    class FastLayerNorm(tr.LayerNorm):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            width = x.shape[-1]
            scale = self.param("scale", tr._p(nn.initializers.ones, ("embed",)), (width,), self.param_dtype)
            bias = self.param("bias", tr._p(nn.initializers.zeros, ("embed",)), (width,), self.param_dtype)
            return layer_norm(x, scale, bias).astype(self.dtype)

    for module in (tr, vit_mod, text_mod):
        module.LayerNorm = FastLayerNorm


# --------------------------------------------------------------------------------------------------
# One measurement (this process)
# --------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Build model, state and batch on the default device; compile; time `args.steps` steps."""
    import jax
    import jax.numpy as jnp

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
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
# Subprocesses: the open_clip reference and sweep variants
# --------------------------------------------------------------------------------------------------


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a benchmark process and return the dict it printed after RESULT_PREFIX, or an error record."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    text = "\n".join(tail)
    kind = "OOM" if ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()) else "failed"
    return {"error": kind, "rc": proc.returncode, "stderr_tail": text}


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


def sweep_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The variants to run: `--variants` if given, else every combination of the --sweep-* lists."""
    if args.variants:
        out = []
        for spec in args.variants.split(";"):
            v = {"batch": args.batch, "attention": args.attention, "remat": args.remat, "scan": args.scan}
            v.update(flags="default", ln=args.ln)
            for item in filter(None, (x.strip() for x in spec.split(","))):
                key, value = item.split("=", 1)
                if key not in v:
                    raise SystemExit(f"--variants: unknown key {key!r} in {spec!r}; use {sorted(v)}")
                v[key] = (
                    int(value) if key == "batch" else (value in ("1", "true") if key == "scan" else value)
                )
            out.append(v)
        return out
    grid = itertools.product(
        [int(b) for b in args.sweep_batch.split(",")],
        args.sweep_attention.split(","),
        args.sweep_remat.split(","),
        [s.strip() in ("1", "true", "scan") for s in args.sweep_scan.split(",")],
        args.sweep_xla.split(","),
    )
    keys = ("batch", "attention", "remat", "scan", "flags")
    return [dict(zip(keys, values, strict=True), ln=args.ln) for values in grid]


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run each variant in a fresh process; variants not started within --max-minutes are skipped."""
    results, start = [], time.perf_counter()
    for variant in sweep_variants(args):
        if variant["flags"] not in XLA_FLAG_SETS:
            raise SystemExit(f"unknown XLA flag set {variant['flags']!r}; known: {sorted(XLA_FLAG_SETS)}")
        if time.perf_counter() - start > args.max_minutes * 60:
            results.append({**variant, "error": "skipped (time budget)"})
            continue
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_FLAG_SETS[variant["flags"]]).strip()
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--dtype",
            args.dtype,
            "--batch",
            str(variant["batch"]),
            "--attention",
            variant["attention"],
            "--remat",
            variant["remat"],
            "--scan" if variant["scan"] else "--no-scan",
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--ln",
            variant["ln"],
        ]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        res = {**variant, **run_child(cmd, env, timeout=args.child_timeout)}
        res["flags"] = variant["flags"]
        results.append(res)
        print(_row(res), flush=True)
        if args.json_out:
            _append_json(args.json_out, res)
    return results


def _append_json(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

TABLE_HEADER = (
    "| batch | attention | remat | scan | LayerNorm | XLA flags | compile s | step ms | images/s | TFLOP/s | MFU "
    "| peak GiB |\n| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: dict[str, Any]) -> str:
    head = f"| {r['batch']} | {r['attention']} | {r['remat']} | {'scan' if r['scan'] else 'unrolled'} | "
    head += f"{r.get('ln', 'model')} | {r.get('flags', '')} | "
    if "error" in r:
        return head + f"{r['error']} | | | | | |"
    mfu = None if r.get("mfu") is None else 100 * r["mfu"]
    return head + (
        f"{r['compile_s']:.1f} | {1e3 * r['step_s_median']:.1f} | {r['images_per_s']:.0f} | "
        f"{r['achieved_tflops']:.1f} | {_fmt(mfu, '.1f')}% | {_fmt(r.get('peak_gib'), '.1f')} |"
    )


def print_result(r: dict[str, Any], ref: dict[str, Any] | None) -> None:
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
        f"peak memory {_fmt(r.get('peak_gib'), '.1f')} GiB"
    )
    print(f"MFU               {mfu} of {_fmt(r['peak_tflops'], '.1f')} TFLOP/s peak bf16")
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
        help="model = the project's LayerNorm; custom_vjp = experiment, see install_custom_vjp_layernorm",
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
        # This process never initialises a backend: each variant gets the whole device.
        print(TABLE_HEADER, flush=True)
        results = sweep(args)
        print(f"\n{args.model} {args.dtype}, {args.steps} timed steps; sorted by images/s:\n")
        print(TABLE_HEADER)
        for r in sorted(results, key=lambda r: -r.get("images_per_s", 0.0)):
            print(_row(r))
        return
    # The reference runs first, before this process's jax takes most of the device memory.
    ref = run_reference(args) if args.reference else None
    result = measure(args)
    if ref is not None:
        result["reference"] = ref
        if "images_per_s" in ref:
            result["ratio_vs_open_clip"] = result["images_per_s"] / ref["images_per_s"]
    print_result(result, ref)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    if args.json_out:
        _append_json(args.json_out, result)


if __name__ == "__main__":
    main()
