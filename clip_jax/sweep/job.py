"""One run of a sweep as a submitit job: train its config in its workdir, resuming from the checkpoints
there, and record running / done / failed / preempted in WORKDIR/status.json.

On Slurm a run that reaches its time limit or is preempted gets submitit's signal (USR2), saves a
checkpoint of the step it is at (the trainer's SIGTERM path) and requeues itself through submitit's
`checkpoint()` hook; the requeued job resumes from that step. A multi-task job joins its processes with
`jax.distributed.initialize()`, which reads the Slurm environment.

This module imports no jax at import time: the job pins itself to its CPUs first.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from typing import Any

import ml_collections
import submitit

from clip_jax.machine import cpu_name
from clip_jax.sweep import status


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit runs (and requeues) for one run."""

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: str, executor: str, cpus: list[int] | None = None
    ) -> None:
        self.config, self.workdir, self.executor, self.cpus = config, workdir, executor, cpus

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same run: the trainer resumes from the checkpoint it saved on the signal."""
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.workdir, self.executor, self.cpus)
        )

    def __call__(self) -> str:
        if self.cpus:
            pin_to_cpus(self.cpus)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        env = submitit.JobEnvironment()
        is_main = env.global_rank == 0
        if is_main:
            previous = status.read(self.workdir)
            status.update(
                self.workdir,
                status=status.RUNNING,
                executor=self.executor,
                job_id=env.job_id,
                pid=os.getpid(),
                host=socket.gethostname(),
                attempt_start=time.time(),
                attempts=int(previous.get("attempts", 0)) + 1,
                error=None,
                # What a run's floats depend on besides its config: the CPU kind and how many CPUs XLA
                # partitioned its loops for (see pin_to_cpus).
                cpu=cpu_name(),
                threads=compute_threads(),
            )
        signals = _StopOnSignal(multi_process=env.num_tasks > 1)
        try:
            state = self._train(env.num_tasks > 1)
        except Exception:
            if is_main:
                _end_attempt(self.workdir, status=status.FAILED, error=traceback.format_exc(limit=-8))
            raise
        import jax

        step = int(jax.device_get(state.step))
        if step >= self.config.total_steps:
            if is_main:
                _end_attempt(self.workdir, status=status.DONE, step=step)
            return status.DONE
        # Stopped early by a signal, with a checkpoint of `step` saved.
        if is_main:
            _end_attempt(self.workdir, status="preempted", step=step)
        if signals.requeue_wanted or self.executor == "slurm":  # time limit, or Slurm preempted it
            signals.requeue()  # submitit: checkpoint(), requeue, exit (on the main task)
        return "preempted"

    def _train(self, distributed: bool) -> Any:
        from clip_jax.train.loop import train

        if distributed:
            join_processes()
        return train(self.config, self.workdir)


def join_processes() -> None:
    """jax.distributed.initialize() from the Slurm environment. JAX then gives each process the one GPU
    of its local rank; a job of one task per node gets all the node's GPUs instead."""
    import jax

    env = submitit.JobEnvironment()
    kwargs = {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if env.num_tasks == env.num_nodes and visible:
        kwargs["local_device_ids"] = list(range(len(visible.split(","))))
    jax.distributed.initialize(**kwargs)


def _end_attempt(workdir: str, **fields: Any) -> None:
    state = status.read(workdir)
    start = state.get("attempt_start")
    wall = float(state.get("wall_s", 0.0)) + (time.time() - start if start else 0.0)
    status.update(workdir, wall_s=wall, attempt_start=None, **fields)


def pin_to_cpus(cpus: list[int]) -> None:
    """Keep this process and the thread pools it will start (XLA, TensorFlow, OpenMP) on `cpus`.

    The number of CPUs changes the numbers a run computes, not only its speed: XLA's CPU compiler
    splits loop fusions (reductions such as the bias gradients included) into as many parallel parts as
    the process may use CPUs (`outer_dimension_partitions` in the optimised HLO), which changes the order
    of float additions. A run on 1 CPU and the same run on 2 differ in the last bits after the first
    step, and visibly after 100. So the count, not only the placement, is what a sweep must hold fixed
    (LocalOptions.cpus_per_run); the tf.data input is the same bits on any count (measured).
    """
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    n = str(len(cpus))
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = n


def compute_threads() -> int:
    """The CPUs this process may run on: the parallelism XLA compiles for (tsl's NumSchedulableCPUs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _StopOnSignal:
    """submitit's time-limit / preemption signal (USR2) turned into the trainer's graceful stop: the
    trainer saves the step it is at and returns, and only then does submitit's handler requeue."""

    def __init__(self, multi_process: bool) -> None:
        self.requeue_wanted = False
        self.multi_process = multi_process
        self.sig = submitit.JobEnvironment._usr_sig()
        self.submitit_handler = signal.getsignal(self.sig)
        signal.signal(self.sig, self._on_usr2)

    def _on_usr2(self, signum: int, frame: Any) -> None:
        self.requeue_wanted = True
        current = signal.getsignal(signal.SIGTERM)
        if not self.multi_process and getattr(current, "__name__", "") == "bypass":
            # The trainer's loop (and its SIGTERM handler) has not started: nothing newer to save.
            self.requeue()
            return
        # Single process: the trainer's handler; several: JAX's preemption service agrees on a step.
        os.kill(os.getpid(), signal.SIGTERM)

    def requeue(self) -> None:
        if callable(self.submitit_handler):
            self.submitit_handler(self.sig, None)
