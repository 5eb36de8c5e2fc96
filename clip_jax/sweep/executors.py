"""submitit executors for a sweep's runs: local (this machine, each run on its share of the cores) and
Slurm (partition, nodes, GPUs or tasks per node, time limit, account, extra sbatch options)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import sys
from typing import Any

import submitit


@dataclasses.dataclass
class LocalOptions:
    parallel: int = 1  # runs at once
    # 0: this process's CPUs split evenly over `parallel`. Set it for results that do not depend on
    # `parallel`: the CPU count of a run changes its floats (job.pin_to_cpus says why).
    cpus_per_run: int = 0
    timeout_min: float = 7 * 24 * 60  # per attempt; at the limit the run saves and restarts
    max_requeues: int = 3


@dataclasses.dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1  # processes per node: 1 (all the node's GPUs) or one per GPU
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60 * 24  # time limit of one attempt; the run requeues itself at the limit
    signal_delay_s: int = 120  # USR2 this long before the limit: time to save a checkpoint
    max_requeues: int = 20  # time-limit requeues of one run
    sbatch: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra #SBATCH --key=value
    setup: list[str] = dataclasses.field(default_factory=list)  # shell lines before srun (module load ...)
    srun_args: list[str] = dataclasses.field(default_factory=list)


def cpu_slots(parallel: int, cpus_per_run: int = 0) -> list[list[int]]:
    """`parallel` disjoint CPU sets from this process's affinity (they wrap if asked for more CPUs
    than there are). With `cpus_per_run` every run gets that many CPUs whatever `parallel` is, so a
    sweep's numbers are the same at any `parallel`; without it the count is len(cpus) // parallel."""
    cpus = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    per = cpus_per_run or max(1, len(cpus) // parallel)
    return [[cpus[(i * per + j) % len(cpus)] for j in range(per)] for i in range(parallel)]


def local_executor(folder: str, options: LocalOptions, cpus: list[int] | None) -> submitit.LocalExecutor:
    """A LocalExecutor whose job process starts under `taskset -c CPUS` (pinned before Python starts)."""
    python = shlex.quote(sys.executable)
    if cpus and shutil.which("taskset"):
        python = f"taskset -c {','.join(map(str, cpus))} {python}"
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=options.max_requeues, python=python)
    executor.update_parameters(timeout_min=options.timeout_min, tasks_per_node=1, nodes=1)
    return executor


def slurm_executor(folder: str, options: SlurmOptions, job_name: str) -> submitit.SlurmExecutor:
    """A SlurmExecutor with one job per run: `nodes x tasks_per_node` processes that find each other
    through jax.distributed.initialize() (the job passes the Slurm environment to it)."""
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
    params: dict[str, Any] = dict(
        job_name=job_name,
        partition=options.partition,
        account=options.account,
        qos=options.qos,
        nodes=options.nodes,
        ntasks_per_node=options.tasks_per_node,
        gpus_per_node=options.gpus_per_node or None,
        cpus_per_task=options.cpus_per_task,
        mem=f"{options.mem_gb:g}GB" if options.mem_gb else None,
        time=options.time_min,
        signal_delay_s=options.signal_delay_s,
        # --requeue: Slurm may also requeue the run itself (node failure, preemption).
        additional_parameters={"requeue": True, **options.sbatch},
        setup=list(options.setup) or None,
        srun_args=list(options.srun_args) or None,
    )
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor
