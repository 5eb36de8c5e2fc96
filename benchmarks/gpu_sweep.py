"""The GPU sweep: variants of the train step (batch, attention, remat, scan, LayerNorm, XLA flags), each
measured by gpu_train_step.py in its own process, and the markdown table of their results.

    python3 benchmarks/gpu_train_step.py --sweep --sweep-batch 512,1024 --sweep-attention xla,cudnn
    python3 benchmarks/gpu_train_step.py --sweep --variants 'batch=512;batch=768,ln=custom_vjp'

A fresh process per variant isolates out-of-memory failures and lets each set its own XLA_FLAGS; this
process never initialises a backend, so each variant gets the whole device.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import add_xla_flags, append_json_line, fmt_optional, run_child

GPU_TRAIN_STEP = Path(__file__).resolve().with_name("gpu_train_step.py")

# Named XLA flag sets for the sweep (`--sweep-xla`); "default" adds nothing.
XLA_FLAG_SETS: dict[str, str] = {
    "default": "",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
    "lhs": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "cublaslt": "--xla_gpu_enable_cublaslt=true",
    "autotune0": "--xla_gpu_autotune_level=0",
}

TABLE_HEADER = (
    "| batch | attention | remat | scan | LayerNorm | XLA flags | compile s | step ms | images/s | TFLOP/s | MFU "
    "| peak GiB |\n| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


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
        add_xla_flags(env, XLA_FLAG_SETS[variant["flags"]])
        cmd = [
            sys.executable,
            str(GPU_TRAIN_STEP),
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
            append_json_line(args.json_out, res)
    return results


def _row(r: dict[str, Any]) -> str:
    """A variant's row of TABLE_HEADER: its settings, then its figures or why there are none."""
    head = f"| {r['batch']} | {r['attention']} | {r['remat']} | {'scan' if r['scan'] else 'unrolled'} | "
    head += f"{r.get('ln', 'model')} | {r.get('flags', '')} | "
    if "error" in r:
        return head + f"{r['error']} | | | | | |"
    mfu = None if r.get("mfu") is None else 100 * r["mfu"]
    return head + (
        f"{r['compile_s']:.1f} | {1e3 * r['step_s_median']:.1f} | {r['images_per_s']:.0f} | "
        f"{r['achieved_tflops']:.1f} | {fmt_optional(mfu, '.1f')}% | "
        f"{fmt_optional(r.get('peak_gib'), '.1f')} |"
    )


def run_sweep(args: argparse.Namespace) -> None:
    """Print each variant's row as it finishes, then the whole table sorted by throughput."""
    print(TABLE_HEADER, flush=True)
    results = sweep(args)
    print(f"\n{args.model} {args.dtype}, {args.steps} timed steps; sorted by images/s:\n")
    print(TABLE_HEADER)
    for r in sorted(results, key=lambda r: -r.get("images_per_s", 0.0)):
        print(_row(r))
