"""A sweep's results table: one row per run with its swept values, status, wall time and final metrics
(train loss and every eval metric of its metrics.jsonl), written as DIR/summary.csv and DIR/summary.md."""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from clip_jax.sweep import status
from clip_jax.sweep.spec import ARG_PREFIX, Run
from clip_jax.sweep.status import read_metrics

# The train metrics a row keeps (the rest of the step's record is for the curves and TensorBoard).
TRAIN_METRICS = ("loss", "images_per_sec")
STATES = (status.DONE, status.RUNNING, status.FAILED, status.PENDING, status.INTERRUPTED)


@dataclasses.dataclass
class Row:
    name: str
    workdir: str
    overrides: dict[str, Any]
    status: str
    wall_s: float | None
    metrics: dict[str, float]
    error: str = ""  # the last lines of the log of a failed or interrupted run


def final_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The last value of `step`, of the train metrics (as `train/loss`, TensorBoard's names) and of
    each `eval/...` metric."""
    out: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if key == "step" or key.startswith("eval/"):
                out[key] = value
            elif key in TRAIN_METRICS:
                out[f"train/{key}"] = value
    return out


def collect(sweep_dir: str, runs: Sequence[Run], shown_status: dict[str, str] | None = None) -> list[Row]:
    """Every run's row, read from its workdir as it is now (`shown_status`: the launcher's view of
    runs it holds back, e.g. pending in its local queue)."""
    shown_status = shown_status or {}
    rows = []
    for run in runs:
        workdir = os.path.join(sweep_dir, run.name)
        state = status.read(workdir)
        now = shown_status.get(run.name) or status.effective(workdir)
        wall = state.get("wall_s")
        if now == status.RUNNING and state.get("attempt_start"):
            wall = float(wall or 0.0) + (time.time() - state["attempt_start"])
        error = ""
        if now in (status.FAILED, status.INTERRUPTED):
            error = status.log_tail(workdir) or (state.get("error") or "").strip()
        metrics = final_metrics(read_metrics(workdir))
        rows.append(Row(run.name, workdir, run.overrides, now, wall, metrics, error))
    return rows


def swept_fields(rows: Sequence[Row]) -> list[str]:
    """Every override key of any run, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r.overrides))


def metric_names(rows: Sequence[Row], counts: bool = True) -> list[str]:
    """The metric columns: train/... then eval/... (`counts`: also eval/.../num_examples)."""
    names = {
        k for r in rows for k in r.metrics if k != "step" and (counts or not k.endswith("/num_examples"))
    }
    train = [f"train/{m}" for m in TRAIN_METRICS if f"train/{m}" in names]
    return train + sorted(n for n in names if n.startswith("eval/"))


def counts(rows: Sequence[Row]) -> Counter:
    return Counter(r.status for r in rows)


def progress_line(rows: Sequence[Row]) -> str:
    """`4 runs: 2 done, 1 running, 0 failed, 1 pending` (and interrupted ones, if any)."""
    c = counts(rows)
    parts = [f"{c[s]} {s}" for s in STATES if s != status.INTERRUPTED or c[s]]
    return f"{len(rows)} runs: " + ", ".join(parts)


def column_name(field: str) -> str:
    return field[len(ARG_PREFIX) :] if field.startswith(ARG_PREFIX) else field


def write_summary(sweep_dir: str, rows: Sequence[Row], title: str, plots: Sequence[str] = ()) -> None:
    """DIR/summary.csv (every value, the full error text) and DIR/summary.md (a table, the errors below)."""
    fields, metrics = swept_fields(rows), metric_names(rows)
    header = ["run", "status", *map(column_name, fields), "step", "wall_s", *metrics]
    shown = [i for i, h in enumerate(header) if not h.endswith("/num_examples")]  # the md table's columns
    table = []
    for r in rows:
        values = [_cell(r.overrides.get(f, "")) for f in fields]
        table.append(
            [
                r.name,
                r.status,
                *values,
                r.metrics.get("step", ""),
                r.wall_s or "",
                *(r.metrics.get(m, "") for m in metrics),
            ]
        )
    tmp = os.path.join(sweep_dir, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "error"])
        for r, line in zip(rows, table, strict=True):
            writer.writerow([*line, r.error])
    os.replace(tmp, os.path.join(sweep_dir, "summary.csv"))

    md = [f"# {title}", "", progress_line(rows), ""]
    md.append("| " + " | ".join(header[i] for i in shown) + " |")
    md.append("|" + "|".join("---" for _ in shown) + "|")
    for line in table:
        md.append("| " + " | ".join(_md(line[i]) for i in shown) + " |")
    bad = [r for r in rows if r.error]
    if bad:
        md += ["", "## Failed and interrupted runs"]
        for r in bad:
            md += ["", f"### {r.name} ({r.status})", "", "```", r.error, "```"]
    if plots:
        md += ["", "## Plots", ""] + [
            f"![{os.path.basename(p)}]({os.path.relpath(p, sweep_dir)})" for p in plots
        ]
    tmp = os.path.join(sweep_dir, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(md) + "\n")
    os.replace(tmp, os.path.join(sweep_dir, "summary.md"))


def _cell(value: Any) -> Any:
    from clip_jax.train.overrides import DROP

    return "dropped" if value is DROP else value


def _md(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
