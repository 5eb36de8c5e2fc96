"""`python -m clip_jax.sweep --config FILE[:arg] --workdir DIR [--executor local|slurm] [--dry-run]`."""

from __future__ import annotations

import argparse
import os
import sys

from clip_jax.cli_errors import UserError, run_cli
from clip_jax.sweep.executors import LocalOptions, SlurmOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m clip_jax.sweep",
        description="Run every point of a config file's sweep(add), each in DIR/<its overrides>, and "
        "summarise them in DIR/summary.{csv,md} and DIR/plots/. Rerunning skips finished runs and "
        "resumes interrupted ones.",
    )
    p.add_argument(
        "--config", required=True, help="config file with get_config(arg) and sweep(add) [:base arg]"
    )
    p.add_argument("--workdir", required=True, help="the sweep's directory; each run gets DIR/<name>")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument(
        "--dry-run", action="store_true", help="print the runs, their workdirs and commands; start nothing"
    )
    p.add_argument(
        "--report", action="store_true", help="only write the summary and plots of the runs as they are"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="rerun failed runs (interrupted ones always resume)"
    )
    p.add_argument(
        "--only", action="append", default=[], help="launch only this run (repeatable); all are summarised"
    )
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override for every run")
    p.add_argument(
        "--drop", action="append", default=[], metavar="FIELD", help="drop for every run (evals.*)"
    )
    p.add_argument(
        "--poll-s", type=float, default=None, help="seconds between status checks (5 local, 30 Slurm)"
    )

    g = p.add_argument_group("local executor")
    g.add_argument(
        "--parallel", type=int, default=1, help="runs at once, each pinned to its share of the CPUs"
    )
    g.add_argument(
        "--cpus-per-run",
        type=int,
        default=0,
        help="CPUs (XLA threads) per run (default: all / --parallel); set it for numbers that do not "
        "depend on --parallel: the count changes a run's floats",
    )
    g.add_argument("--timeout-min", type=float, default=LocalOptions.timeout_min, help="per attempt")

    g = p.add_argument_group("Slurm executor")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--tasks-per-node", type=int, default=1, help="processes per node (1, or one per GPU)")
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=float)
    g.add_argument(
        "--time", type=int, default=SlurmOptions.time_min, help="time limit in minutes; runs requeue at it"
    )
    g.add_argument("--signal-delay-s", type=int, default=SlurmOptions.signal_delay_s)
    g.add_argument("--max-requeues", type=int, default=SlurmOptions.max_requeues)
    g.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH --KEY=VALUE"
    )
    g.add_argument("--setup", action="append", default=[], metavar="LINE", help="shell line before srun")
    g.add_argument("--no-wait", action="store_true", help="submit and return; rerun (or --report) to follow")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when every run is done (or, with --no-wait / --dry-run, submitted / listed)."""
    args = parse_args(argv)
    from clip_jax.sweep import results, status
    from clip_jax.sweep.launcher import check_options, launch, plan
    from clip_jax.sweep.spec import load_sweep
    from clip_jax.train.overrides import DROP, parse_value

    # Every value is checked before anything is read or listed: a dry run passes only what the launch takes.
    local = LocalOptions(args.parallel, args.cpus_per_run, args.timeout_min)
    slurm = SlurmOptions(
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        time_min=args.time,
        signal_delay_s=args.signal_delay_s,
        max_requeues=args.max_requeues,
        sbatch=dict(_key_value(s) for s in args.sbatch),
        setup=args.setup,
    )
    check_options(local, slurm, args.poll_s)
    common = {path: DROP for path in args.drop}
    for item in args.set:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise UserError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set lr=1e-3")
        common[path.strip()] = parse_value(text)
    sweep = load_sweep(args.config)
    if args.only:
        unknown = set(args.only) - {r.name for r in sweep.runs}
        if unknown:
            raise UserError(f"--only: no run named {sorted(unknown)}; --dry-run lists them")
    sweep_dir = os.path.abspath(args.workdir)

    if args.dry_run:
        for p in plan(sweep, sweep_dir, common, args.retry_failed, args.only):
            print(f"{p.run.name}  [{p.now} -> {p.action}]{'  ' + p.note if p.note else ''}")
            print(f"  workdir: {p.workdir}")
            print(f"  command: {sweep.train_command(p.run, p.workdir, common)}")
        return 0
    if args.report:
        from clip_jax.sweep.plots import write_plots

        os.makedirs(sweep_dir, exist_ok=True)
        rows = results.collect(sweep_dir, sweep.runs)
        results.write_summary(sweep_dir, rows, f"Sweep {sweep.config_file}", write_plots(sweep_dir, rows))
        print(results.progress_line(rows))
        print(f"summary: {os.path.join(sweep_dir, 'summary.md')}")
        return 0

    poll_s = args.poll_s if args.poll_s is not None else (30.0 if args.executor == "slurm" else 5.0)
    rows = launch(
        sweep,
        sweep_dir,
        executor=args.executor,
        local=local,
        slurm=slurm,
        common=common,
        retry_failed=args.retry_failed,
        only=args.only,
        wait=not args.no_wait,
        poll_s=poll_s,
        log=lambda line: print(line, flush=True),
    )
    if args.no_wait:
        return 0
    return 0 if all(r.status == status.DONE for r in rows) else 1


def _key_value(item: str) -> tuple[str, str | bool]:
    key, sep, value = item.partition("=")
    return key.strip().lstrip("-"), (value if sep else True)


def exit_status(argv: list[str]) -> None:
    """main() for run_cli: an error of the command line is one line and status 2 (run_cli); runs that
    failed are status 1, their errors already printed by the launcher."""
    status = main(argv)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    sys.exit(run_cli(exit_status, "clip_jax.sweep"))
