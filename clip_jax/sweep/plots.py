"""A sweep's plots (matplotlib, PNG under DIR/plots/): each final metric against each swept field, one
line per combination of the other swept fields, and the curves of all runs overlaid."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

from clip_jax.sweep.results import Row, column_name, metric_names, swept_fields
from clip_jax.sweep.status import read_metrics

_NCOLS = 3


def write_plots(sweep_dir: str, rows: Sequence[Row]) -> list[str]:
    """by_<field>.png for every field with more than one value among the finished runs, and curves.png;
    returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = os.path.join(sweep_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    done = [r for r in rows if r.status == "done" and r.metrics]
    metrics = metric_names(done, counts=False)
    paths = []
    # Fields with one value among the finished runs neither get a plot nor split the lines of others.
    varying = [f for f in swept_fields(rows) if len({_key(r.overrides.get(f)) for r in done}) > 1]
    for field in varying if metrics else []:
        paths.append(_by_field(out_dir, done, field, [f for f in varying if f != field], metrics))
    curves = [r for r in rows if r.metrics]
    if curves:
        paths.append(_curves(out_dir, curves))
    return paths


def _figure(n: int):
    import matplotlib.pyplot as plt

    cols = min(_NCOLS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _by_field(out_dir: str, rows: Sequence[Row], field: str, others: list[str], metrics: list[str]) -> str:
    import matplotlib.pyplot as plt

    xs = sorted({_key(r.overrides.get(field)) for r in rows}, key=_sort_key)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault(tuple(_key(r.overrides.get(o)) for o in others), []).append(r)
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for group, members in sorted(groups.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]):
            points = sorted(
                ((_key(r.overrides.get(field)), r.metrics[metric]) for r in members if metric in r.metrics),
                key=lambda p: _sort_key(p[0]),
            )
            if not points:
                continue
            px = [p[0] if numeric else xs.index(p[0]) for p in points]
            label = ", ".join(f"{column_name(o)}={v}" for o, v in zip(others, group, strict=True)) or None
            ax.plot(px, [p[1] for p in points], marker="o", label=label)
        if log:
            ax.set_xscale("log", base=2)
        if numeric and len(xs) <= 12:
            ax.set_xticks(xs, [str(x) for x in xs])
        elif not numeric:
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(column_name(field))
        ax.set_title(_metric_title(metric), fontsize=9)
        ax.grid(alpha=0.3)
    if any(ax.get_legend_handles_labels()[0] for ax in axes) and others:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"by_{_safe(column_name(field))}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _curves(out_dir: str, rows: Sequence[Row]) -> str:
    import matplotlib.pyplot as plt

    series = {r.name: read_metrics(r.workdir) for r in rows}
    # Eval metrics logged more than once in some run (an evaluation only at the end has no curve).
    evals = {
        k
        for recs in series.values()
        for k in {k for rec in recs for k in rec if k.startswith("eval/") and not k.endswith("/num_examples")}
        if sum(k in rec for rec in recs) > 1
    }
    metrics = ["train/loss"] + sorted(evals)
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for name, records in series.items():
            key = metric.removeprefix("train/")
            points = [(rec["step"], rec[key]) for rec in records if key in rec and "step" in rec]
            if points:
                ax.plot(*zip(*points, strict=True), label=name, marker="." if len(points) < 20 else None)
        ax.set_xlabel("step")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    if len(series) <= 12:
        axes[0].legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(out_dir, "curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _metric_title(metric: str) -> str:
    return f"final {metric}"


def _key(value: Any) -> Any:
    """A hashable, printable stand-in for an override value (lists and dicts as their repr)."""
    if value is None:
        return "default"
    return value if isinstance(value, (int, float, str, bool)) else repr(value)


def _sort_key(value: Any) -> tuple:
    return (
        (0, value, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (1, 0, str(value))
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
