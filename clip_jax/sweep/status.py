"""Each run's state on disk (WORKDIR/status.json), what it means now, and the tail of its log.

The job writes running / done / failed / preempted into status.json, the launcher what it submitted
into submission.json; a run whose job is gone before it wrote done or failed was interrupted (killed,
out of memory, node lost), and a rerun resumes it from its last checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import time
from typing import Any

STATUS_FILE = "status.json"  # written by the job (and by the launcher for a run it finds dead)
SUBMISSION_FILE = "submission.json"  # written by the launcher: executor, job id, host, time
RUN_FILE = "run.json"  # the run's overrides, config argument and resolved config
LOG_DIR = "logs"
# What the launcher shows: every run is in exactly one of these.
DONE, RUNNING, PENDING, FAILED, INTERRUPTED = "done", "running", "pending", "failed", "interrupted"
# Slurm states of a job that will not run again; any other (PENDING, RUNNING, REQUEUED, PREEMPTED, and
# UNKNOWN while sacct cannot tell, as submitit reads it) counts as alive, so a run is never started twice.
_SLURM_ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def read(workdir: str, name: str = STATUS_FILE) -> dict[str, Any]:
    """The run's status.json (or another of its JSON files); {} if it has none."""
    try:
        with open(os.path.join(workdir, name)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def update(workdir: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into status.json, written atomically (a reader never sees half a file)."""
    state = {**read(workdir), **fields, "updated": time.time()}
    write_json(os.path.join(workdir, STATUS_FILE), state)
    return state


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def effective(workdir: str) -> str:
    """done | running | pending | failed | interrupted, from status.json, submission.json (what the
    launcher last submitted) and whether that job still lives."""
    state, sub = read(workdir), read(workdir, SUBMISSION_FILE)
    if sub and sub.get("submitted", 0) > state.get("updated", 0):
        # Submitted after the job last wrote: queued, or starting.
        if job_alive(sub, workdir):
            return PENDING if sub.get("executor") == "slurm" else RUNNING
        return INTERRUPTED
    if state.get("status") in (DONE, FAILED, INTERRUPTED):
        return state["status"]
    if state.get("status") in (RUNNING, "preempted"):
        return RUNNING if job_alive(state, workdir) or job_alive(sub, workdir) else INTERRUPTED
    # No status file: a run started by hand (`python -m clip_jax.train`, e.g. on a TPU pod).
    if finished_by_metrics(workdir):
        return DONE
    return INTERRUPTED if os.path.isdir(os.path.join(workdir, "checkpoints")) else PENDING


def close_dead_attempt(workdir: str) -> None:
    """Count a killed attempt's time (up to its last log line) and mark it interrupted."""
    state = read(workdir)
    if state.get("status") == INTERRUPTED:
        return
    start, end = state.get("attempt_start"), last_log_time(workdir)
    wall = float(state.get("wall_s") or 0.0) + (max(0.0, end - start) if start and end else 0.0)
    update(workdir, status=INTERRUPTED, wall_s=wall, attempt_start=None)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of WORKDIR/metrics.jsonl (a half-written last line, from a killed run, is skipped)."""
    records = []
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return records


def finished_by_metrics(workdir: str) -> bool:
    """True when metrics.jsonl reached config.json's total_steps."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            total = int(json.load(f)["total_steps"])
    except (OSError, KeyError, ValueError):
        return False
    return any(r.get("step") == total and "loss" in r for r in read_metrics(workdir))


def job_alive(state: dict[str, Any], workdir: str) -> bool:
    """Whether the job in `state` still runs: a live local process on this host, or a Slurm job that
    is queued or running."""
    if not state:
        return False
    if state.get("executor") == "slurm":
        job_id = state.get("job_id")
        if not job_id:
            return False
        import submitit

        try:
            state = submitit.SlurmJob(os.path.join(workdir, LOG_DIR), str(job_id)).state
        except Exception:  # sacct missing or failing: assume it lives, never start a duplicate
            return True
        return (state.split() or ["UNKNOWN"])[0].upper() not in _SLURM_ENDED
    if state.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: not ours to judge
    return any(pid_alive(int(p)) for p in (state.get("pid"), state.get("job_id")) if p)


def job_alive_any(workdir: str) -> bool:
    """Whether the job that last wrote the run's status, or the one last submitted for it, still runs."""
    return job_alive(read(workdir), workdir) or job_alive(read(workdir, SUBMISSION_FILE), workdir)


def pid_alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def log_tail(workdir: str, lines: int = 15) -> str:
    """The last lines of the run's newest log (stderr, where tracebacks and the trainer's log go),
    from its last traceback on if there is one."""
    logs = glob.glob(os.path.join(workdir, LOG_DIR, "*_log.err")) or glob.glob(
        os.path.join(workdir, LOG_DIR, "*_log.out")
    )
    if not logs:
        return ""
    newest = max(logs, key=os.path.getmtime)
    with open(newest, "rb") as f:
        f.seek(max(0, os.path.getsize(newest) - 64 * 1024))
        text = f.read().decode(errors="replace")
    # Progress bars rewrite one line with carriage returns: keep each line's last state.
    rows = [row.rsplit("\r", 1)[-1].rstrip() for row in text.split("\n")]
    rows = [r for r in rows if r.strip() and not r.startswith("INFO:submitit")]
    starts = [i for i, r in enumerate(rows) if r.startswith("Traceback (most recent call last)")]
    if starts:
        rows = rows[starts[-1] :]
        rows = rows[:2] + rows[2:][-(lines - 2) :] if len(rows) > lines else rows
    return "\n".join(rows[-lines:])


def last_log_time(workdir: str) -> float | None:
    """When the run's logs or metrics were last written (the end of a killed attempt)."""
    paths = glob.glob(os.path.join(workdir, LOG_DIR, "*_log.*")) + [os.path.join(workdir, "metrics.jsonl")]
    times = [os.path.getmtime(p) for p in paths if os.path.exists(p)]
    return max(times) if times else None
