"""Launch a sweep's runs and watch them: what each run needs (start, resume, retry, skip), submission
through submitit, progress lines, and the summary and plots when the runs end.

Rerunning the same command is safe: finished runs are skipped, interrupted ones resume from their last
checkpoint, failed ones are retried only with retry_failed, runs still alive (in the Slurm queue, or a
local process of an earlier launcher) are watched, never started twice; runs new to the sweep start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import ml_collections

from clip_jax.cli_errors import UserError
from clip_jax.sweep import status
from clip_jax.sweep.executors import LocalOptions, SlurmOptions, cpu_slots, local_executor, slurm_executor
from clip_jax.sweep.results import Row, collect, progress_line, write_summary
from clip_jax.sweep.spec import Run, Sweep

START, RESUME, RETRY, WATCH, SKIP = "start", "resume", "retry", "watch", "skip"


@dataclasses.dataclass
class Planned:
    run: Run
    workdir: str
    now: str  # its status before this launch
    action: str
    config: ml_collections.ConfigDict | None = None
    note: str = ""  # why it is skipped, or a warning


def plan(
    sweep: Sweep,
    sweep_dir: str,
    common: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    only: Collection[str] = (),
) -> list[Planned]:
    """What to do with each run (`only`: names to consider, default all). A run whose overrides do not
    make a valid config is failed here, with the error, and never submitted."""
    out = []
    for run in sweep.runs:
        workdir = os.path.join(sweep_dir, run.name)
        now = status.effective(workdir)
        if only and run.name not in only:
            out.append(Planned(run, workdir, now, SKIP))
            continue
        config, error = _resolve(sweep, run, common)
        if now == status.DONE:
            stale = config is not None and _stored_config(workdir) not in (None, _as_dict(config))
            note = (
                "done with another config than the sweep's now; delete its workdir to rerun" if stale else ""
            )
            out.append(Planned(run, workdir, now, SKIP, config, note))
        elif now in (status.RUNNING, status.PENDING) and status.job_alive_any(workdir):
            out.append(Planned(run, workdir, now, WATCH, config))
        elif now == status.FAILED and not retry_failed:
            out.append(Planned(run, workdir, now, SKIP, config, "failed; --retry-failed reruns it"))
        elif error:
            out.append(Planned(run, workdir, now, SKIP, None, error))
        else:
            action = {status.FAILED: RETRY, status.INTERRUPTED: RESUME}.get(now, START)
            out.append(Planned(run, workdir, now, action, config))
    return out


def check_options(local: LocalOptions, slurm: SlurmOptions, poll_s: float | None = None) -> None:
    """UserError naming the flag of the first launcher value no launch could use. The command line calls
    it before --dry-run lists the runs, so that a dry run passes only what the launch would accept."""
    cpus_per_task = slurm.cpus_per_task
    checks = [
        ("--parallel", local.parallel, local.parallel >= 1, ">= 1"),
        ("--cpus-per-run", local.cpus_per_run, local.cpus_per_run >= 0, ">= 0 (0: all CPUs / --parallel)"),
        ("--timeout-min", local.timeout_min, local.timeout_min > 0, "> 0"),
        ("--poll-s", poll_s, poll_s is None or poll_s > 0, "> 0"),
        ("--nodes", slurm.nodes, slurm.nodes >= 1, ">= 1"),
        ("--tasks-per-node", slurm.tasks_per_node, slurm.tasks_per_node >= 1, ">= 1"),
        ("--gpus-per-node", slurm.gpus_per_node, slurm.gpus_per_node >= 0, ">= 0"),
        ("--cpus-per-task", cpus_per_task, cpus_per_task is None or cpus_per_task >= 1, ">= 1"),
        ("--mem-gb", slurm.mem_gb, slurm.mem_gb is None or slurm.mem_gb > 0, "> 0"),
        ("--time", slurm.time_min, slurm.time_min >= 1, ">= 1 (minutes)"),
        ("--signal-delay-s", slurm.signal_delay_s, slurm.signal_delay_s >= 0, ">= 0"),
        ("--max-requeues", slurm.max_requeues, slurm.max_requeues >= 0, ">= 0"),
    ]
    for flag, value, ok, want in checks:
        if not ok:
            raise UserError(f"{flag} {value}: must be {want}")
    if slurm.time_min * 60 <= slurm.signal_delay_s:
        raise UserError(
            f"--signal-delay-s {slurm.signal_delay_s} is not shorter than --time {slurm.time_min} min: "
            "the run would be signalled to save before it starts"
        )
    for key in slurm.sbatch:
        if not key:
            raise UserError("--sbatch needs KEY=VALUE (e.g. --sbatch constraint=a100), got an empty key")


def _resolve(sweep: Sweep, run: Run, common: Mapping[str, Any] | None) -> tuple[Any, str]:
    from clip_jax.train.config import validate_config

    try:
        config = sweep.resolve(run, common)
        validate_config(config)
    except Exception as e:  # any error of the user's config or overrides fails this run alone
        return None, f"invalid run: {type(e).__name__}: {e}"
    return config, ""


def _as_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _stored_config(workdir: str) -> dict | None:
    return status.read(workdir, status.RUN_FILE).get("config")


def launch(
    sweep: Sweep,
    sweep_dir: str,
    *,
    executor: str = "local",
    local: LocalOptions | None = None,
    slurm: SlurmOptions | None = None,
    common: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    only: Collection[str] = (),
    wait: bool = True,
    poll_s: float = 5.0,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Start what the plan says, watch until no run is alive (unless `wait` is False on Slurm), and
    write DIR/summary.csv, DIR/summary.md and DIR/plots/; returns the rows."""
    local, slurm = local or LocalOptions(), slurm or SlurmOptions()
    os.makedirs(sweep_dir, exist_ok=True)
    planned = plan(sweep, sweep_dir, common, retry_failed, only)
    for p in planned:
        if p.action == SKIP and p.config is None and p.note.startswith("invalid run"):
            status.update(p.workdir, status=status.FAILED, error=p.note, executor="launcher")
        if p.note:
            log(f"{p.run.name}: {p.note}")
        if p.now == status.INTERRUPTED and p.action != SKIP:
            status.close_dead_attempt(p.workdir)
    todo = [p for p in planned if p.action in (START, RESUME, RETRY)]
    log(f"sweep {sweep.config_file} -> {sweep_dir}: " + ", ".join(_action_counts(planned)))
    watcher = _Watcher(sweep, sweep_dir, log)
    if executor == "slurm":
        for p in todo:
            _submit(
                p,
                sweep,
                common,
                "slurm",
                slurm_executor(_logs(p), slurm, f"{os.path.basename(sweep_dir)}/{p.run.name}"),
            )
        watcher.show()
        if wait:
            while any(status.effective(p.workdir) in (status.RUNNING, status.PENDING) for p in planned):
                time.sleep(poll_s)
                watcher.show()
    else:
        _run_local(todo, planned, sweep, common, local, watcher, poll_s)
    return watcher.finish()


def _run_local(todo, planned, sweep, common, options: LocalOptions, watcher, poll_s: float) -> None:
    slots = cpu_slots(options.parallel, options.cpus_per_run)
    free = list(range(len(slots)))
    queue, active = list(todo), {}
    others = [p for p in planned if p.action == WATCH]
    while queue or active or any(status.job_alive_any(p.workdir) for p in others):
        while queue and free:
            slot, p = free.pop(0), queue.pop(0)
            job = _submit(
                p, sweep, common, "local", local_executor(_logs(p), options, slots[slot]), slots[slot]
            )
            active[p.run.name] = (p, job, slot)
        for name, (p, job, slot) in list(active.items()):
            if job.done():
                del active[name]
                free.append(slot)
                if status.effective(p.workdir) == status.INTERRUPTED:
                    _record_dead_job(p.workdir, job)
        watcher.show({p.run.name: status.PENDING for p in queue})
        if queue or active or others:
            time.sleep(poll_s)


def _record_dead_job(workdir: str, job: Any) -> None:
    """A job that ended without writing done or failed: failed if submitit caught an exception (e.g. the
    job could not even load), else interrupted (killed)."""
    import pickle

    try:
        with open(job.paths.result_pickle, "rb") as f:
            outcome, value = pickle.load(f)
    except Exception:  # no result: the process was killed
        outcome, value = None, None
    if outcome == "error":
        status.update(workdir, status=status.FAILED, error=str(value), attempt_start=None)
    else:
        status.close_dead_attempt(workdir)


def _logs(p: Planned) -> str:
    return os.path.join(p.workdir, status.LOG_DIR)


def _submit(p: Planned, sweep: Sweep, common, kind: str, executor: Any, cpus: list[int] | None = None) -> Any:
    from clip_jax.sweep.job import TrainJob

    os.makedirs(_logs(p), exist_ok=True)
    status.write_json(
        os.path.join(p.workdir, status.RUN_FILE),
        {
            "name": p.run.name,
            "overrides": {k: repr(v) for k, v in p.run.overrides.items()},
            "config_file": sweep.config_file,
            "config_arg": sweep.arg_string(p.run),
            "command": sweep.train_command(p.run, p.workdir, common),
            "config": _as_dict(p.config),
        },
    )
    submitted = time.time()  # before the job can write its first status
    first = status.read(p.workdir, status.SUBMISSION_FILE).get("first_submitted", submitted)
    job = executor.submit(TrainJob(p.config, p.workdir, kind, cpus))
    status.write_json(
        os.path.join(p.workdir, status.SUBMISSION_FILE),
        {
            "first_submitted": first,
            "executor": kind,
            "job_id": str(job.job_id),
            "host": socket.gethostname(),
            "submitted": submitted,
            "cpus": cpus,
        },
    )
    return job


def _action_counts(planned: list[Planned]) -> list[str]:
    labels = {
        START: "to start",
        RESUME: "to resume",
        RETRY: "to retry",
        WATCH: "still running",
        SKIP: "skipped",
    }
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.action] = counts.get(p.action, 0) + 1
    return [f"{n} {labels[a]}" for a, n in counts.items()]


class _Watcher:
    """Progress lines when the counts change (and once a minute), the summary rewritten with them."""

    def __init__(self, sweep: Sweep, sweep_dir: str, log: Callable[[str], None]) -> None:
        self.sweep, self.sweep_dir, self.log = sweep, sweep_dir, log
        self.start, self.last_line, self.last_time = time.time(), "", 0.0

    def rows(self, shown: dict[str, str] | None = None) -> list[Row]:
        return collect(self.sweep_dir, self.sweep.runs, shown)

    def show(self, shown: dict[str, str] | None = None) -> None:
        rows = self.rows(shown)
        line = progress_line(rows)
        if line != self.last_line or time.time() - self.last_time > 60:
            self.log(f"[{time.time() - self.start:6.0f}s] {line}")
            write_summary(self.sweep_dir, rows, self.title)
            self.last_line, self.last_time = line, time.time()

    @property
    def title(self) -> str:
        return f"Sweep {self.sweep.config_file}"

    def finish(self) -> list[Row]:
        from clip_jax.sweep.plots import write_plots

        rows = self.rows()
        plots = write_plots(self.sweep_dir, rows)
        write_summary(self.sweep_dir, rows, self.title, plots)
        self.log(f"[{time.time() - self.start:6.0f}s] {progress_line(rows)}")
        for r in rows:
            if r.error:
                self.log(f"--- {r.name} ({r.status}):\n{r.error}")
        self.log(f"summary: {os.path.join(self.sweep_dir, 'summary.md')}")
        return rows
