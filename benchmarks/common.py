"""Shared helpers of the side-by-side benchmarks: alternating timing, medians, throughput ratios, tables.

Every comparison runs both implementations in one process on the same inputs: one warm-up call each,
then `repeats` rounds that time ours and theirs back to back (the order flips every round, so neither
side always runs right after the other). Reported are medians, which resist the noise of a shared
machine, and the ratio ours/theirs as throughput (> 1: clip_jax is faster).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


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

    `targets` maps a row's `target` key (or its name) to the ratio it should reach.
    """
    targets = targets or {}
    lines = [
        "| benchmark | unit | clip_jax | open_clip | ratio ours/theirs | target | median s ours / theirs "
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
