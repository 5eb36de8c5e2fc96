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


def latest_complete_step(directory: str | os.PathLike) -> tuple[Path, list[str]]:
    """The newest step folder of a checkpoint directory that is complete, and the newer ones skipped.

    Steps come from orbax's own listing of finalised checkpoints; a finalised step whose state item never
    fully arrived (`is_complete`), and orbax's temporary folders of an interrupted save, are skipped and
    named in the second value. FileNotFoundError if there is no complete step.
    """
    from orbax.checkpoint.path import step as ocp_step

    root = Path(directory)
    steps = sorted(ocp_step.checkpoint_steps(root))
    complete = [s for s in steps if is_complete(root / str(s))]
    skipped = [str(s) for s in steps if s not in complete]
    skipped += sorted(ocp_step.tmp_checkpoints(root)) if root.is_dir() else []
    if not complete:
        raise FileNotFoundError(
            f"no complete checkpoint step in {root}" + (f" (incomplete: {skipped})" if skipped else "")
        )
    best = complete[-1]
    return root / str(best), [
        s for s in skipped if not s.split(".")[0].isdigit() or int(s.split(".")[0]) > best
    ]


def restore_params(path: str | os.PathLike, expected: Any = None) -> tuple[Any, Path]:
    """The params (host numpy arrays, per-layer layout) of the newest complete step of a training run.

    `path` is a workdir (holding checkpoints/), a checkpoint directory or one step folder. With `expected`
    (a tree of arrays or ShapeDtypeStructs, e.g. the model's `jax.eval_shape` of init), the saved shapes
    are compared first, from the checkpoint's metadata, and the first key that differs is named with
    both shapes, before any array is read.
    """
    import numpy as np

    from clip_jax.models import unstack_layers

    root = Path(path)
    if (root / "state").is_dir() or (root / "_CHECKPOINT_METADATA").is_file():
        step_dir = root
    else:
        directory = root / "checkpoints" if (root / "checkpoints").is_dir() else root
        step_dir, skipped = latest_complete_step(directory)
        if skipped:
            log.warning("%s: using step %s; skipped incomplete %s", directory, step_dir.name, skipped)
    item = step_dir / "state" if (step_dir / "state").exists() else step_dir
    checkpointer = ocp.StandardCheckpointer()
    if expected is not None:
        saved = checkpointer.metadata(item).item_metadata.tree
        saved = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved.get("params", saved))
        _check_shapes(jax.eval_shape(unstack_layers, saved), expected, item)
    state = checkpointer.restore(item)
    params = state["params"] if "params" in state else state
    return unstack_layers(jax.tree.map(np.asarray, params)), step_dir


def _check_shapes(saved: Any, expected: Any, where: Path) -> None:
    from clip_jax.sharding import dict_key_path

    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {dict_key_path(p): tuple(leaf.shape) for p, leaf in leaves}

    got, want = shapes(saved), shapes(expected)
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            raise ValueError(
                f"{where} does not hold this model: {key} has shape {got.get(key, 'absent')} in the checkpoint, "
                f"{want.get(key, 'absent')} in the model (is --model right?)"
            )
