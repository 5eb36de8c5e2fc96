"""Run the benchmarks and regenerate benchmarks/RESULTS.md (with the machine described).

    bash scripts/bench.sh                     # sets up .venv (test extras), then everything in DEFAULT
    bash scripts/bench.sh --quick             # small sizes, few repeats: a smoke test
    bash scripts/bench.sh --only inference --only tokenizer
    bash scripts/bench.sh --only cpu_variants # the XLA:CPU investigation (long; not in DEFAULT)

`scripts/bench.sh` runs this file with the project's venv (`.venv/bin/python benchmarks/run_all.py ...`);
another interpreter without jax, torch and open_clip is refused before anything is run or rewritten.

Each benchmark runs in its own Python process (`--worker NAME`), so that XLA_FLAGS (8 simulated devices
for the memory benchmarks) apply before jax starts and no benchmark inherits another's caches or memory.
Results are kept in benchmarks/results.json: `--only` reruns some benchmarks and the others keep their
last figures (each section says when and under which load it was measured); a `--quick` result never
replaces a full-size one. RESULTS.md is written from
that file, plus benchmarks/RESULTS_GPU.md verbatim when it exists.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results.json"
RESULTS_GPU_MD = HERE / "RESULTS_GPU.md"
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
# Benchmark modules import clip_jax and `benchmarks.common` from this checkout; the untracked
# ones by file name.
for _p in (str(REPO_ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchmarks.common import add_xla_flags, emit_result, ratio_table, read_result  # noqa: E402

TARGETS = {"image": 1.2, "text": 1.2, "train": 1.2, "tokenizer": 5.0}
# What the benchmarks and RESULTS.md's renderers import (the project's test extras).
REQUIRED_MODULES = ("jax", "flax", "optax", "tensorflow", "sklearn", "torch", "open_clip", "transformers")


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # file in benchmarks/, without .py
    title: str
    call: Callable  # (module, quick) -> result (a dict or a list of dicts)
    xla_flags: str = ""
    default: bool = True
    summary: bool = False  # its ours-vs-open_clip ratios go into RESULTS.md's summary table


def _kwargs_known(fn: Callable, **kwargs) -> dict:
    """The subset of kwargs that `fn` accepts (the input-pipeline and probe benchmarks are evolving)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _input_pipeline(m, quick: bool):
    kw = dict(batches=5, batch_size=32, num_jpegs=256) if quick else {}
    return m.run(**_kwargs_known(m.run, **kw))


def _linear_probe(m, quick: bool):
    return m.run(m.QUICK_CONFIGS, 1) if quick and hasattr(m, "QUICK_CONFIGS") else m.run()


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "inference",
            "bench_models",
            "Image and text tower inference (fp32), and a zero-shot classifier built by each library",
            lambda m, q: m.run(quick=q, only=("image", "text", "zeroshot")),
            summary=True,
        ),
        Benchmark(
            "train_step",
            "bench_models",
            "Full train step (fp32): forward, contrastive loss, backward, AdamW",
            lambda m, q: m.run(quick=q, models=(m.TRAIN_MODEL,), only=("train",)),
            summary=True,
        ),
        Benchmark(
            "train_step_b16",
            "bench_models",
            "Full train step (fp32) of ViT-B-16: 197 tokens, where attention weighs more",
            lambda m, q: m.run(quick=q, models=("ViT-B-16",), only=("train",), train_batch=4 if q else 8),
            summary=True,
        ),
        Benchmark(
            "tokenizer",
            "bench_tokenizer",
            "Tokenizer throughput",
            lambda m, q: dict(m.run(repeats=2 if q else 5), target="tokenizer", unit="prompts/s"),
            summary=True,
        ),
        Benchmark(
            "tokenizer_sentencepiece",
            "bench_tokenizer",
            "Sentencepiece tokenizer in the training input pipeline (SigLIP)",
            lambda m, q: m.run_sentencepiece(repeats=2 if q else 5),
        ),
        Benchmark(
            "train_memory",
            "bench_train_memory",
            "Per-device memory of the sharded train step at scale (compiled, not run)",
            lambda m, q: m.run(quick=q),
            xla_flags=EIGHT_DEVICES,
        ),
        Benchmark(
            "loss_memory",
            "bench_loss_memory",
            "Per-device memory of the contrastive loss + grad (compiled, not run)",
            lambda m, q: m.run(batches=(4096,) if q else (4096, 32768)),
            xla_flags=EIGHT_DEVICES,
        ),
        Benchmark("input_pipeline", "bench_input_pipeline", "Input pipeline throughput", _input_pipeline),
        Benchmark("linear_probe", "bench_linear_probe", "Linear probe fit time", _linear_probe),
        Benchmark(
            "eval_pipeline",
            "bench_eval_pipeline",
            "Evaluation input: the exact (PIL) pipeline, its tf.image fast path, and open_clip's loader",
            lambda m, q: m.run(quick=q),
        ),
        Benchmark(
            "resnet",
            "bench_families",
            "RN50 image tower inference (fp32) beside open_clip's",
            lambda m, q: m.run_resnet(batch=2 if q else 8, repeats=3 if q else 7),
            summary=True,
        ),
        Benchmark(
            "siglip",
            "bench_families",
            "ViT-B-16-SigLIP image and text tower inference (fp32) beside transformers'",
            lambda m, q: m.run_siglip(
                image_batch=2 if q else 4, text_batch=4 if q else 16, repeats=3 if q else 5
            ),
            summary=True,
        ),
        Benchmark(
            "siglip_train",
            "bench_siglip_train",
            "ViT-B-16-SigLIP train step (fp32, sigmoid loss) beside open_clip's",
            lambda m, q: m.run(batch=2 if q else 8, repeats=2 if q else 5),
            summary=True,
        ),
        Benchmark(
            "tiny_train",
            "bench_tiny_train",
            "The main job's training loop on CPU: every setting tried, each against the default",
            lambda m, q: m.run_all(steps=60 if q else 100, names=["bf16", "no_input"] if q else None),
        ),
        Benchmark(
            "cpu_variants",
            "cpu_sweep",
            "XLA:CPU investigation: flags, thread counts, model variants, batch sizes",
            lambda m, q: m.sweep(quick=q),
            default=False,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# Worker: one benchmark in this process
# --------------------------------------------------------------------------------------------------


def worker(name: str, quick: bool) -> None:
    bench = BENCHMARKS[name]
    module = importlib.import_module(bench.module)
    emit_result(bench.call(module, quick))


def run_worker(name: str, quick: bool) -> dict:
    """Run one benchmark in a child process; stderr streams through, the result comes back as JSON."""
    bench = BENCHMARKS[name]
    env = dict(os.environ)
    add_xla_flags(env, bench.xla_flags)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name] + (["--quick"] if quick else [])
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    # stderr streams through as it comes; its tail is kept, so a failure's record says why.
    err_tail: collections.deque[str] = collections.deque(maxlen=15)

    def echo_stderr() -> None:
        for line in proc.stderr:
            sys.stderr.write(line)
            err_tail.append(line.rstrip("\n"))

    echo = threading.Thread(target=echo_stderr, daemon=True)
    echo.start()
    stdout = proc.stdout.read()
    proc.wait()
    echo.join()
    record = {
        "quick": quick,
        "date": _now(),
        "wall_s": round(time.perf_counter() - start, 1),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "xla_flags": env.get("XLA_FLAGS", ""),
    }
    result = read_result(stdout)
    if proc.returncode != 0 or result is None:
        tail = "\n".join(stdout.splitlines()[-5:] + list(err_tail))
        record["error"] = f"exit status {proc.returncode}; last output:\n{tail}"
    else:
        record["result"] = result
    return record


# --------------------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    from clip_jax.machine import cpu_name

    try:
        mem_kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
        ram = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        ram = "unknown"
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "open_clip_torch", "transformers")
        },
    }


def _section_markdown(bench: Benchmark, record: dict) -> str:
    header = (
        f"Measured {record['date']}{' with --quick' if record['quick'] else ''}; "
        f"load average {record['load_before']:.1f} before, {record['load_after']:.1f} after; "
        f"{record['wall_s']:.0f} s"
        + (f"; XLA_FLAGS=`{record['xla_flags']}`" if record.get("xla_flags") else "")
        + "."
    )
    if "error" in record:
        return f"{header}\n\nFAILED: ```\n{record['error']}\n```"
    failed = record.get("failed_attempt")
    if failed:
        header += (
            f" A later run ({failed['date']}{' with --quick' if failed['quick'] else ''}) FAILED and"
            f" kept these figures: ```\n{failed['error']}\n```"
        )
    try:
        module = importlib.import_module(bench.module)
        render = getattr(module, "to_markdown", None) or getattr(module, "markdown", None)
    except Exception as e:  # noqa: BLE001 -- a module that no longer imports still gets a raw table
        render, header = None, f"{header} (renderer unavailable: {e})"
    result = record["result"]
    body = render(result) if render else _generic_table(result if isinstance(result, list) else [result])
    return f"{header}\n\n{body}"


def _generic_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _summary(records: dict) -> str:
    """All ours-vs-open_clip throughput ratios against the issue's targets."""
    rows = []
    for name in (n for n, b in BENCHMARKS.items() if b.summary):
        result = records.get(name, {}).get("result")
        if result is None:
            continue
        rows += [r for r in (result if isinstance(result, list) else [result]) if "ratio" in r]
    return ratio_table(rows, TARGETS) if rows else "(no throughput comparisons recorded yet)"


def write_markdown(records: dict) -> str:
    m = machine()
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        "# Benchmarks: clip_jax vs open_clip",
        "",
        "Generated by `bash scripts/bench.sh` (`benchmarks/run_all.py` in the project's venv; see "
        "benchmarks/README.md for what each row measures). "
        "Ratios are ours/theirs as throughput: > 1 means clip_jax is faster. Both sides run in one process, "
        "alternating after warm-up, on the same weights (asserted to give the same outputs), fp32, each "
        "framework's default thread count; figures are medians.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram']}; {m['os']}; Python {m['python']}",
        f"- {versions}",
        f"- RESULTS.md written {_now()}; every section below states when and under which load it was measured "
        "(load average above the core count means other processes shared the CPU, which makes timings noisy).",
        "",
        "## Summary: ratios vs targets",
        "",
        _summary(records),
    ]
    for name, bench in BENCHMARKS.items():
        if name in records:
            out += ["", f"## {bench.title}", "", _section_markdown(bench, records[name])]
    if RESULTS_GPU_MD.exists():
        out += [
            "",
            "---",
            "",
            "*Below: benchmarks/RESULTS_GPU.md, included verbatim.*",
            "",
            RESULTS_GPU_MD.read_text().rstrip(),
        ]
    text = "\n".join(out) + "\n"
    RESULTS_MD.write_text(text)
    return text


def stored_record(previous: dict | None, new: dict) -> dict:
    """What results.json keeps for a benchmark after a run that produced `new`.

    A failure never erases figures (the last good ones stay, with the failure noted beside them), and a
    --quick smoke test never replaces a full-size result.
    """
    if previous is None or "result" not in previous:
        return new
    if "error" in new:
        return {**previous, "failed_attempt": {k: new[k] for k in ("date", "quick", "error")}}
    if new["quick"] and not previous.get("quick"):
        return previous
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only these (repeatable); others keep their figures from results.json",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from results.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.quick)
        return
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"benchmarks/run_all.py: this Python ({sys.executable}) lacks {', '.join(missing)}. Run "
            "`bash scripts/bench.sh` instead (it creates .venv with the test extras and runs this script "
            "in it); nothing was run and RESULTS.md is unchanged."
        )
    records = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    names = [] if args.render else (args.only or [n for n, b in BENCHMARKS.items() if b.default])
    failed = []
    for name in names:
        bench = BENCHMARKS[name]
        if not (HERE / f"{bench.module}.py").exists():
            print(f"== {name}: benchmarks/{bench.module}.py not found, skipped", file=sys.stderr)
            continue
        print(f"== {name} ({bench.module}){' --quick' if args.quick else ''}", file=sys.stderr, flush=True)
        record = run_worker(name, args.quick)
        if "error" in record:
            failed.append(name)
            print(f"== {name} FAILED: {record['error']}", file=sys.stderr)
        stored = stored_record(records.get(name), record)
        if stored is not record:
            print(f"== {name}: results.json keeps the figures of {stored['date']}", file=sys.stderr)
        records[name] = stored
        # Save after each benchmark: a long run that is cut off keeps what it measured.
        RESULTS_JSON.write_text(json.dumps(records, indent=1, default=float) + "\n")
        write_markdown(records)
    print(write_markdown(records))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
