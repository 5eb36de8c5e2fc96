"""Cooldown branches (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations"): config.branch_from starts a new workdir from a checkpoint of another run, taking its params,
optimizer state, step, RNG and data position, so the branch trains exactly as the parent would have
continued, under the branch's own schedule. One constant-lr run then serves many training lengths: each
length is a branch with `schedule="const-cooldown"` whose cooldown ends at its own total_steps.

The parent is only read: no Checkpointer is opened on it (that would tidy its directory), its step folder
is read with orbax's plain checkpointers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections

from clip_jax.checkpoint import (
    CheckpointMismatch,
    abstract_layout,
    check_fits,
    is_complete,
    latest_complete_step,
)


def branch_step_dir(branch_from: str) -> Path:
    """The step folder config.branch_from names: `<workdir>/checkpoints/<step>` itself, or the newest complete
    step of a workdir (or of its checkpoints/ folder). ValueError naming the field if there is none."""
    path = Path(os.path.abspath(branch_from))
    if (path / "state").is_dir():
        if not is_complete(path):
            raise ValueError(
                f"config.branch_from={branch_from!r} is an incomplete checkpoint step; name another"
            )
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    try:
        step_dir, _ = latest_complete_step(directory)
    except FileNotFoundError as e:
        raise ValueError(
            f"config.branch_from={branch_from!r} holds no complete checkpoint: give a training workdir or "
            "one of its checkpoints/<step> folders"
        ) from e
    return step_dir


def check_branch_config(config: ml_collections.ConfigDict) -> None:
    """The branch point exists and lies before the branch's end and its cooldown (a cooldown started before
    the branch point would have been trained at constant lr by the parent)."""
    if not config.branch_from:
        return
    step = int(branch_step_dir(config.branch_from).name)
    if step >= config.total_steps:
        raise ValueError(
            f"config.total_steps={config.total_steps} must be beyond the branch point, step {step} of "
            f"config.branch_from={config.branch_from!r}"
        )
    if config.schedule == "const-cooldown" and config.total_steps - config.cooldown_steps < step:
        raise ValueError(
            f"config.cooldown_steps={config.cooldown_steps} would start the cooldown at step "
            f"{config.total_steps - config.cooldown_steps}, before the branch point (step {step} of "
            f"config.branch_from); at most {config.total_steps - step}"
        )


def same_workdir(branch_from: str, workdir: str) -> bool:
    """Whether the branch would write into its parent's workdir."""
    step_dir = branch_step_dir(branch_from)
    return Path(os.path.abspath(workdir)) in (step_dir.parent.parent, step_dir.parent)


def restore_branch_point(branch_from: str, abstract_state: Any) -> tuple[int, Any, dict]:
    """(step, train state, data item) of config.branch_from's step, restored into `abstract_state`'s
    shapes and shardings without writing anything in the parent's workdir."""
    import orbax.checkpoint as ocp

    step_dir = branch_step_dir(branch_from)
    try:
        check_fits(step_dir, abstract_layout(abstract_state))
    except CheckpointMismatch as e:
        raise ValueError(
            f"config.branch_from={branch_from!r}: {e}; a branch trains the parent's model and optimizer layout"
        ) from e
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(step_dir / "state", abstract_state)
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        data = checkpointer.restore(step_dir / "data")
    return int(step_dir.name), state, dict(data or {})
