"""Train-state checkpoints with orbax: asynchronous saves, keep-N, resume, preemption and resharding.

A checkpoint holds the TrainState (params, optimizer state, step, RNG) and the input iterator's
position as JSON, so a resumed run sees exactly the batches it would have seen. orbax writes each
step into a temporary directory and renames it when complete, so a checkpoint cut short by a kill is
never picked up as the latest one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with the two items a training run needs."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        _set_aside_incomplete_steps(Path(self.directory))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
                # Half-written tmp directories left by a killed run are removed at start-up.
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force: bool = False) -> bool:
        """Start an asynchronous save of `state` (a pytree of jax.Arrays) at `step`."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore into the shapes/dtypes/shardings of `abstract_state` (ShapeDtypeStructs with
        shardings), which may be on a different mesh than the one that saved it."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def is_complete(step_dir: Path) -> bool:
    """orbax writes _CHECKPOINT_METADATA when a step is finalised and _METADATA when the state item is."""
    return (step_dir / "_CHECKPOINT_METADATA").is_file() and (step_dir / "state" / "_METADATA").is_file()


def _set_aside_incomplete_steps(directory: Path) -> None:
    """Rename step directories whose contents never fully arrived (e.g. copied or synced by hand and cut
    off) to `<step>.incomplete-<time>`, so they are neither restored nor in the way of a new save of
    that step. Nothing is deleted."""
    if jax.process_index() == 0 and directory.is_dir():
        for child in directory.iterdir():
            if child.is_dir() and child.name.isdigit() and not is_complete(child):
                target = child.with_name(f"{child.name}.incomplete-{int(time.time())}")
                log.warning("checkpoint %s is incomplete; moved aside to %s", child, target)
                child.rename(target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("clip_jax.checkpoint: incomplete steps set aside")


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
