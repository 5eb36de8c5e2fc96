"""Profile of the main job's training loop on CPU: every setting tried, each against the default.

    python benchmarks/bench_tiny_train.py [--steps 150] [--arg steps=...,patch=8] [--only NAME ...]

Each setting trains configs/synthetic_tiny.py (the main job's model and data, evaluation and checkpoints
off) in its own child process, since XLA reads its flags once and the thread settings are per process.
Reported: the loop's images/s (the trainer's own figure over the log windows after the first, so
compilation is excluded), as a ratio to the default setting measured in the same run. The settings cover
what issue 17 asked to try: XLA:CPU flags, thread counts, the input pipeline (a random-batch source
that needs none, tf.data parallelism, the device prefetch thread), and bf16 compute on CPUs that have it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, add_xla_flags, emit_result, read_result
from clip_jax.machine import cpu_name

# name -> (what it changes, config overrides, extra XLA flags, environment)
SETTINGS: dict[str, tuple[str, dict, str, dict]] = {
    "default": ("fp32, XLA defaults, tf.data AUTOTUNE, device prefetch 2", {}, "", {}),
    "bf16": ("compute dtype bfloat16 (params and optimizer stay fp32)", {"dtype": "bfloat16"}, "", {}),
    "no_input": ("random batches made in the loop: no tf.data, no decode (the step alone)", {}, "", {}),
    "prefetch_off": ("batches read and placed on the devices inside the step loop", {"prefetch": 0}, "", {}),
    "tfdata_1": ("tf.data map parallelism 1 instead of AUTOTUNE", {"data.num_parallel_calls": 1}, "", {}),
    "eigen_single_thread": ("XLA's Eigen ops single-threaded", {}, "--xla_cpu_multi_thread_eigen=false", {}),
    "ynn_off": (
        "XLA:CPU dots to its own emitter, not YNNPACK",
        {},
        "--xla_cpu_experimental_ynn_fusion_type=",
        {},
    ),
    "patch_dropout_0.5": (
        "FLIP: half of the 16 image patches dropped in training",
        {"patch_dropout": 0.5},
        "",
        {},
    ),
    "patch_dropout_0.75": ("FLIP: 3/4 of the image patches dropped", {"patch_dropout": 0.75}, "", {}),
    "frozen_token_embedding": (
        "the 49408 x 128 token table (6.3M of the 7.6M params) frozen: no dense gradient or AdamW on it",
        {"freeze": ("^text/token_embedding/",)},
        "",
        {},
    ),
    "omp_1": ("OMP_NUM_THREADS=1 and TF intra/inter-op threads 1", {}, "", {"OMP_NUM_THREADS": "1"}),
}


def _child(setting: str, steps: int, arg: str) -> None:
    import tensorflow as tf

    from clip_jax.data import prepare_synthetic
    from clip_jax.train.loop import train
    from configs.synthetic_tiny import get_config

    _, overrides, _, env = SETTINGS[setting]
    if env.get("OMP_NUM_THREADS") == "1":
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    data_dir = str(REPO_ROOT / "runs" / "tensorflow_datasets")
    prepare_synthetic(data_dir)
    config = get_config(f"steps={steps}" + (f",{arg}" if arg else ""))
    config.data.data_dir = data_dir
    config.evals = {}
    config.eval_every = 0
    config.checkpoint_every = 10 * steps
    if setting == "no_input":
        import ml_collections

        config.data = ml_collections.ConfigDict({"source": "random", "distinct_batches": 0})
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        train(config, workdir)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r][1:]  # the first window compiles
    emit_result({"setting": setting, "images_per_sec": statistics.median(rates), "wall_s": wall})


def run(names: list[str], steps: int, arg: str) -> list[dict]:
    results = []
    for name in names:
        _, _, flags, extra_env = SETTINGS[name]
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
        add_xla_flags(env, flags)
        cmd = [sys.executable, __file__, "--child", name, "--steps", str(steps), "--arg", arg]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        result = read_result(proc.stdout) or {"setting": name, "error": proc.stderr.strip()[-800:]}
        print(f"  {name}: {result.get('images_per_sec', 'failed')}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def run_all(steps: int = 150, arg: str = "", names: list[str] | None = None) -> dict:
    """Every setting (default first), as one result record for benchmarks/run_all.py."""
    names = [n for n in (names or list(SETTINGS)) if n != "default"]
    return {"steps": steps, "arg": arg, "cpu": cpu_name(), "rows": run(["default", *names], steps, arg)}


def to_markdown(result: dict) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["setting"] == "default" and "error" not in r), None)
    arg = result["arg"]
    lines = [
        f"CPU: {result['cpu']}; {result['steps']} steps of configs/synthetic_tiny.py"
        + (f":{arg}" if arg else "")
        + " per setting, each in its own process (evaluation and checkpoints off); images/s is the"
        " trainer's own figure, median over the log windows after the first (which compiles).",
        "",
        "| setting | what it changes | images/s | ratio to default | wall s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        what = SETTINGS[r["setting"]][0]
        if "error" in r:
            lines.append(f"| {r['setting']} | {what} | failed | | |")
            continue
        ratio = f"{r['images_per_sec'] / base['images_per_sec']:.2f}x" if base else ""
        lines.append(f"| {r['setting']} | {what} | {r['images_per_sec']:.0f} | {ratio} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--arg", default="", help="configs/synthetic_tiny.py argument, e.g. patch=8,width=128")
    p.add_argument("--only", action="append", choices=sorted(SETTINGS), help="settings to run (default all)")
    p.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.steps, args.arg)
        return
    print(to_markdown(run_all(args.steps, args.arg, args.only)))


if __name__ == "__main__":
    main()
