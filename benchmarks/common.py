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


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds of one call; `fn` must wait for its own result (block_until_ready for jax)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclasses.dataclass
class Timings:
    ours_s: list[float]
    theirs_s: list[float]

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


def alternate(ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int, warmup: int = 1) -> Timings:
    """Warm both up, then time `repeats` rounds of (ours, theirs), flipping the order every round."""
    for _ in range(warmup):
        ours()
        theirs()
    ours_s, theirs_s = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ours_s.append(time_once(ours))
            theirs_s.append(time_once(theirs))
        else:
            theirs_s.append(time_once(theirs))
            ours_s.append(time_once(ours))
    return Timings(ours_s, theirs_s)


def throughput_row(name: str, unit: str, items: int, timings: Timings, **extra: Any) -> dict:
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
        "ours_all_s": timings.ours_s,
        "theirs_all_s": timings.theirs_s,
        **extra,
    }


def ratio_table(rows: Sequence[dict], targets: dict[str, float] | None = None) -> str:
    """Markdown table of throughput rows (any dict with name, ours_per_s, theirs_per_s, ratio).

    `targets` maps a row's `target` key (or its name) to the ratio it should reach.
    """
    targets = targets or {}
    lines = [
        "| benchmark | unit | clip_jax | open_clip | ratio ours/theirs | target | median s ours / theirs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = targets.get(r.get("target", r["name"]))
        verdict = "" if target is None else f">= {target:g}x {'met' if r['ratio'] >= target else 'NOT met'}"
        secs = f"{r['ours_s']:.3f} / {r['theirs_s']:.3f}" if "ours_s" in r else ""
        lines.append(
            f"| {r['name']} | {r.get('unit', 'items/s')} | {fmt_rate(r['ours_per_s'])} "
            f"| {fmt_rate(r['theirs_per_s'])} | {r['ratio']:.2f}x | {verdict} | {secs} |"
        )
    return "\n".join(lines)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"
