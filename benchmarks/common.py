"""Shared helpers of the benchmarks: alternating timing, medians, throughput ratios, tables, child runs.

Every comparison runs both implementations in one process on the same inputs: one warm-up call each,
then `repeats` rounds that time ours and theirs back to back (the order flips every round, so neither
side always runs right after the other). Reported are medians, which resist the noise of a shared
machine, and the ratio ours/theirs as throughput (> 1: clip_jax is faster).

Benchmarks that need their own XLA_FLAGS or device memory run in child processes, which hand their
result back as one JSON line on stdout (`emit_result` / `read_result`).

Standard library only: the GPU benchmark imports this on a machine without torch or tensorflow.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Features are O(1); the two frameworks sum in different orders, so agreement is to float32 rounding.
ATOL = 1e-4
RESULT_PREFIX = "RESULT_JSON "


def make_repo_importable() -> None:
    """Let `python benchmarks/x.py` import clip_jax (and `benchmarks.common`) from this checkout."""
    for p in (str(REPO_ROOT), str(REPO_ROOT / "benchmarks")):
        if p not in sys.path:
            sys.path.insert(0, p)


def time_once(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; `fn` must wait for its own result.

    CPU time counts every thread of this process; on a shared machine it is the steadier of the two,
    since time spent descheduled does not count (spin-waiting threads do).
    """
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


@dataclasses.dataclass
class Timings:
    ours_s: list[float]
    theirs_s: list[float]
    ours_cpu_s: list[float] = dataclasses.field(default_factory=list)
    theirs_cpu_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def theirs_median(self) -> float:
        return statistics.median(self.theirs_s)

    @property
    def ratio(self) -> float:
        """Throughput ratio ours/theirs = theirs' median time / ours'."""
        return self.theirs_median / self.ours_median

    @property
    def cpu_ratio(self) -> float:
        """The same ratio from median process CPU time (what each side cost, not how long it waited)."""
        return statistics.median(self.theirs_cpu_s) / statistics.median(self.ours_cpu_s)


def alternate(ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int, warmup: int = 1) -> Timings:
    """Warm both up, then time `repeats` rounds of (ours, theirs), flipping the order every round."""
    for _ in range(warmup):
        ours()
        theirs()
    t = Timings([], [])
    for i in range(repeats):
        for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
            wall, cpu = time_once(ours if side == "ours" else theirs)
            getattr(t, f"{side}_s").append(wall)
            getattr(t, f"{side}_cpu_s").append(cpu)
    return t


def throughput_row(name: str, unit: str, items: float, timings: Timings, **extra: Any) -> dict:
    """One result row: medians in seconds, throughput in `unit` (e.g. 'images/s') and the ratio."""
    return {
        "name": name,
        "unit": unit,
        "items": items,
        "repeats": len(timings.ours_s),
        "ours_s": timings.ours_median,
        "theirs_s": timings.theirs_median,
        "ours_per_s": items / timings.ours_median,
        "theirs_per_s": items / timings.theirs_median,
        "ratio": timings.ratio,
        "cpu_ratio": timings.cpu_ratio,
        "ours_all_s": timings.ours_s,
        "theirs_all_s": timings.theirs_s,
        "ours_cpu_all_s": timings.ours_cpu_s,
        "theirs_cpu_all_s": timings.theirs_cpu_s,
        **extra,
    }


def ratio_table(rows: Sequence[dict], targets: dict[str, float] | None = None) -> str:
    """Markdown table of throughput rows (any dict with name, ours_per_s, theirs_per_s, ratio).

    `targets` maps a row's `target` key (or its name) to the ratio it should reach. A row's `reference`
    (default open_clip) names the other side; rows with different references share a "reference" column.
    """
    targets = targets or {}
    references = {r.get("reference", "open_clip") for r in rows}
    theirs = references.pop() if len(references) == 1 else "reference"
    lines = [
        f"| benchmark | unit | clip_jax | {theirs} | ratio ours/theirs | target | median s ours / theirs "
        "| ratio by CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = targets.get(r.get("target", r["name"]))
        verdict = "" if target is None else f">= {target:g}x {'met' if r['ratio'] >= target else 'NOT met'}"
        secs = f"{r['ours_s']:.3f} / {r['theirs_s']:.3f}" if "ours_s" in r else ""
        cpu = f"{r['cpu_ratio']:.2f}x" if "cpu_ratio" in r else ""
        lines.append(
            f"| {r['name']} | {r.get('unit', 'items/s')} | {fmt_rate(r['ours_per_s'])} "
            f"| {fmt_rate(r['theirs_per_s'])} | {r['ratio']:.2f}x | {verdict} | {secs} | {cpu} |"
        )
    return "\n".join(lines)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def fmt_optional(x: Any, spec: str) -> str:
    """`x` formatted with `spec`, or "-" where the figure is unknown (None)."""
    return "-" if x is None else format(x, spec)


def log_row(row: dict) -> None:
    """One throughput row as a progress line on stderr (stdout is for the tables and results)."""
    print(
        f"  {row['name']}: ours {row['ours_s']:.3f} s, open_clip {row['theirs_s']:.3f} s, ratio {row['ratio']:.2f}x"
        f" (by CPU time {row['cpu_ratio']:.2f}x; compile {row.get('compile_s', float('nan')):.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def add_xla_flags(env: MutableMapping[str, str], flags: str) -> None:
    """Append `flags` to env's XLA_FLAGS; XLA reads them once, when its backend starts."""
    if flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()


def emit_result(result: Any) -> None:
    """Print a child process's result as the one line its parent reads back (`read_result`)."""
    print(RESULT_PREFIX + json.dumps(result, default=float), flush=True)


def read_result(stdout: str) -> Any | None:
    """The result a child printed with `emit_result` (its last one), or None if it printed none."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else None


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a benchmark process and return the dict it emitted, or an error record that says why not.

    Out-of-memory failures are told apart from other ones, since a sweep expects some of them.
    """
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    result = read_result(proc.stdout)
    if result is not None:
        return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    text = "\n".join(tail)
    kind = "OOM" if ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()) else "failed"
    return {"error": kind, "rc": proc.returncode, "stderr_tail": text}


def append_json_line(path: str, record: dict[str, Any]) -> None:
    """Append `record` to a JSON-lines file, so that a long sweep cut off keeps what it measured."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
