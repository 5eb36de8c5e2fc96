"""Run one ablation through `python -m clip_jax.sweep` and regenerate its results here.

    python experiments/ablations/run.py NAME [--workdir runs/ablations/NAME] [--parallel 2]

Builds the embedded synthetic dataset if needed, runs (or resumes: the sweep is re-entrant) every point,
then writes experiments/ablations/NAME/results.md (the command, the machine, a table of the runs and the
ablation's own comparison), summary.csv and the sweep's plots. Nothing there is edited by hand.
Every run computes on CPUS_PER_RUN CPUs whatever --parallel is: the CPU count changes a run's floats
(clip_jax.sweep.job.pin_to_cpus), so the committed numbers come back on any --parallel.
`lit` and `prompts` start from a trained run (runs/ablations/lit/tower, the main job's recipe), which
they train first if it is not there; `prompts` only evaluates it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clip_jax.machine import cpu_name
from clip_jax.sweep import status

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ABLATIONS = {
    # SigLIP's Fig. 2 claim: the sigmoid loss is ahead of softmax at small batch sizes.
    "loss_batch": {
        "config": "configs/sweeps/loss_batch.py:steps=100,warmup=25",
        "compare": ("loss", ("softmax", "sigmoid")),
        "by": "batch",
        "metrics": ("eval/color/acc1", "eval/color/acc5", "eval/shape/acc1", "train/loss"),
    },
    # Issue 17: the search that chose the main job's recipe; accuracy read at every eval step of each run.
    "main_recipe": {
        "config": "configs/sweeps/main_recipe.py:steps=600",
        "columns": ("patch", "image_size", "width", "layers", "batch", "lr", "loss"),
        "metrics": ("eval/shape/acc1", "eval/color/acc1", "train/loss", "train/images_per_sec"),
        "report": "curves",
    },
    # FLIP's claim: dropping patches buys more images per second, and accuracy for the time.
    "flip": {
        "config": "configs/sweeps/flip.py:steps=300",
        "set": ("eval_every=50",),
        "columns": ("patch_dropout",),
        "metrics": ("train/images_per_sec", "eval/shape/acc1", "eval/color/acc1", "train/loss"),
        "report": "equal_time",
    },
    # LiT's claim: a locked pretrained image tower beats fine-tuning it, and training from scratch.
    "lit": {
        "config": "configs/sweeps/lit.py:steps=200",
        "set": ("eval_every=50",),
        "tower": True,
        "columns": ("lit",),
        "metrics": ("eval/shape/acc1", "eval/color/acc1", "train/loss"),
        "report": "curves",
    },
    # CLIP's prompt ensembling: one template against the average of all of them, zero-shot.
    "prompts": {"tower": True, "eval_only": True},
}
# CPUs (and so XLA threads) of every run, whatever --parallel is: XLA partitions its loops by the CPU count,
# which changes the floats. 1 is what --parallel 2 gave each run on the 2-core machines that made the
# committed results, and it reproduces on a machine of any size.
CPUS_PER_RUN = 1
# The trained run that `lit` takes its image tower from and `prompts` evaluates: the main job's recipe.
TOWER_CONFIG = "configs/synthetic_tiny.py"
TOWER_DIR = REPO / "runs" / "ablations" / "lit" / "tower"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(ABLATIONS))
    p.add_argument("--workdir", help="the sweep's directory (default runs/ablations/NAME)")
    p.add_argument("--data-dir", default=str(REPO / "runs" / "tensorflow_datasets"))
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args(argv)
    spec = ABLATIONS[args.name]
    workdir = Path(args.workdir or REPO / "runs" / "ablations" / args.name).resolve()
    os.chdir(REPO)

    from clip_jax.data import prepare_synthetic
    from clip_jax.sweep.cli import main as sweep_main

    prepare_synthetic(args.data_dir)
    start = time.time()
    if spec.get("tower"):
        train_tower(args.data_dir)
    if spec.get("eval_only"):
        from prompt_ensembling import write_prompts_results  # beside this file

        write_prompts_results(TOWER_DIR, HERE / args.name, args.data_dir, time.time() - start, cpu_name())
        return 0
    command = ["--config", spec["config"], "--workdir", str(workdir), "--parallel", str(args.parallel)]
    command += ["--cpus-per-run", str(CPUS_PER_RUN)]
    command += ["--set", f"data.data_dir={args.data_dir}"]
    for override in spec.get("set", ()):
        command += ["--set", override]
    rc = sweep_main(command)
    elapsed = time.time() - start
    write_results(args.name, spec, workdir, command, elapsed, args.parallel)
    return rc


def train_tower(data_dir: str) -> None:
    """Train (or finish: the trainer resumes) the run that `lit` and `prompts` start from."""
    cmd = [sys.executable, "-m", "clip_jax.train", "--config", TOWER_CONFIG, "--workdir", str(TOWER_DIR)]
    cmd += [f"--config.data.data_dir={data_dir}"]
    print("tower run:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def write_results(
    name: str, spec: dict, workdir: Path, command: list[str], elapsed: float, parallel: int
) -> None:
    out = HERE / name
    if out.exists():
        shutil.rmtree(out)
    (out / "plots").mkdir(parents=True)
    shutil.copy(workdir / "summary.csv", out / "summary.csv")
    for png in sorted((workdir / "plots").glob("*.png")):
        shutil.copy(png, out / "plots" / png.name)
    with open(workdir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    columns, metrics = _columns(spec, rows), spec["metrics"]
    wall = sum(float(r["wall_s"] or 0) for r in rows)
    threads = sorted({str(status.read(str(workdir / r["run"])).get("threads", "?")) for r in rows})
    span = _span(workdir, [r["run"] for r in rows])
    lines = [
        f"# Ablation `{name}`",
        "",
        "Generated by `python experiments/ablations/run.py " + name + "`; do not edit.",
        "",
        f"- sweep: `python -m clip_jax.sweep {' '.join(command[:2])} --parallel {parallel} "
        f"--cpus-per-run {CPUS_PER_RUN}` "
        + " ".join(f"`--set {o}`" for o in spec.get("set", ()))
        + " (+ data_dir)",
        f"- machine: {cpu_name()}, {len(os.sched_getaffinity(0))} CPU cores, Python {platform.python_version()}; "
        f"each run on {'/'.join(threads)} CPU(s) (its status.json `threads`): the numbers depend on the CPU kind "
        "and that count, not on --parallel",
        f"- {len(rows)} runs, {sum(r['status'] == 'done' for r in rows)} done, {parallel} at a time; "
        f"{span / 60:.1f} min from the first submission to the last run's end ({wall:.0f} s of run time in all; "
        f"this invocation {elapsed:.0f} s)",
        "",
        "| " + " | ".join([*columns, "status", "step", "wall_s", *metrics]) + " |",
        "|" + "---|" * (3 + len(columns) + len(metrics)),
    ]
    for r in sorted(rows, key=lambda r: [_sort_key(r.get(c, "")) for c in columns]):
        cells = [*(r.get(c, "") for c in columns), r["status"], r["step"], _fmt(r["wall_s"], 0)]
        lines.append("| " + " | ".join([*cells, *(_fmt(r.get(m, "")) for m in metrics)]) + " |")
    if "compare" in spec:
        lines += _compare(spec, rows)
    if spec.get("report") == "curves":
        lines += _curves_table(workdir, rows, [m for m in metrics if m.startswith("eval/")])
    if spec.get("report") == "equal_time":
        lines += _equal_time(workdir, rows, [m for m in metrics if m.startswith("eval/")], out / "plots")
    lines += [
        "",
        "Plots: " + ", ".join(f"[{p.name}](plots/{p.name})" for p in sorted((out / "plots").glob("*.png"))),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/results.md")


def _columns(spec: dict, rows: list[dict]) -> list[str]:
    """The swept fields to show: the spec's, those that the summary has."""
    wanted = spec.get("columns") or (spec["by"], spec["compare"][0])
    return [c for c in wanted if rows and c in rows[0]]


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _compare(spec: dict, rows: list[dict]) -> list[str]:
    """metric of b minus a (the compared field's two values) at each value of `by`."""
    (field, (a, b)), by, metric = spec["compare"], spec["by"], spec["metrics"][0]
    lines = ["", f"{metric}, {b} minus {a}, at each {by}:", ""]
    for value in sorted({r[by] for r in rows}, key=_sort_key):
        pair = {r[field]: r.get(metric, "") for r in rows if r[by] == value and r["status"] == "done"}
        if pair.get(a) and pair.get(b):
            diff = float(pair[b]) - float(pair[a])
            lines.append(f"- {by}={value}: {float(pair[b]):.3f} vs {float(pair[a]):.3f} ({diff:+.3f})")
    return lines


def _curve(run_dir: Path) -> list[tuple[int, float, dict]]:
    """(step, training seconds so far, eval metrics) at every evaluated step of a run.

    Training seconds add up the trainer's images/s over its log windows (the first window, which also
    compiles, is counted at the run's median rate), so evaluation and checkpoint time are left out.
    """
    config = json.loads((run_dir / "config.json").read_text())
    batch, log_every = config["batch_size"], config["log_every"]
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    rates = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    median = sorted(rates)[len(rates) // 2] if rates else float("nan")
    out, seconds, last = [], 0.0, 0
    for r in records:
        if r["step"] % log_every == 0 or "images_per_sec" in r:
            seconds += (r["step"] - last) * batch / r.get("images_per_sec", median)
            last = r["step"]
        evals = {k: v for k, v in r.items() if k.startswith("eval/")}
        if evals:
            out.append((r["step"], seconds + (r["step"] - last) * batch / median, evals))
    return out


def _curves_table(workdir: Path, rows: list[dict], metrics: list[str]) -> list[str]:
    """Each run's metrics at every evaluated step (the accuracy at every shorter budget)."""
    lines = []
    for metric in metrics:
        curves = {r["run"]: _curve(workdir / r["run"]) for r in rows if r["status"] == "done"}
        steps = sorted({s for c in curves.values() for s, _, e in c if metric in e})
        lines += ["", f"{metric} at each evaluated step:", ""]
        lines += ["| run | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---:|" * len(steps)]
        for run, curve in curves.items():
            at = {s: e[metric] for s, _, e in curve if metric in e}
            lines.append(f"| {run} | " + " | ".join(_fmt(str(at.get(s, ""))) for s in steps) + " |")
    return lines


def _equal_time(workdir: Path, rows: list[dict], metrics: list[str], plots: Path) -> list[str]:
    """Each metric at the training time of the fastest run's end (linear between evaluations), and a
    plot of each metric against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = {r["run"]: _curve(workdir / r["run"]) for r in rows if r["status"] == "done"}
    if not curves:
        return []
    budget = min(c[-1][1] for c in curves.values())
    lines = [
        "",
        f"At equal training time, {budget:.0f} s (the end of the fastest run; evaluation excluded):",
        "",
    ]
    lines += ["| run | " + " | ".join(metrics) + " | steps by then |", "|---|" + "---:|" * (len(metrics) + 1)]
    for run, curve in curves.items():
        t = np.array([0.0] + [c[1] for c in curve])
        steps = np.interp(budget, t, [0] + [c[0] for c in curve])
        cells = []
        for m in metrics:
            values = [c[2].get(m, np.nan) for c in curve]
            cells.append(f"{np.interp(budget, t[1:], values):.3f}")
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {steps:.0f} |")
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run, curve in curves.items():
            ax.plot([c[1] for c in curve], [c[2].get(m, np.nan) for c in curve], marker="o", label=run)
        ax.axvline(budget, color="gray", linestyle=":")
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel(m)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots / f"{m.replace('/', '_')}_vs_time.png", dpi=100)
        plt.close(fig)
    return lines


def _span(workdir: Path, names: list[str]) -> float:
    """Seconds from the first run's first submission to the last run's last status update."""
    starts = [status.read(str(workdir / n), status.SUBMISSION_FILE).get("first_submitted") for n in names]
    starts = [s for s in starts if s] or [
        status.read(str(workdir / n), status.SUBMISSION_FILE).get("submitted", 0) for n in names
    ]
    ends = [status.read(str(workdir / n)).get("updated", 0) for n in names]
    return max(ends) - min(starts) if starts and ends else 0.0


def _fmt(value: str, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except ValueError:
        return value


if __name__ == "__main__":
    sys.exit(main())
