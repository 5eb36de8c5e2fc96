"""Train-state checkpoints with orbax: asynchronous saves, keep-N, resume, preemption and resharding.

A checkpoint holds the TrainState (params, optimizer state, step, RNG) and the input iterator's
position as JSON, so a resumed run sees exactly the batches it would have seen. orbax writes each
step into a temporary directory and renames it when complete, so a checkpoint cut short by a kill is
never picked up as the latest one.

Two ways a step can fail to resume are kept apart: a step that does not *fit* the run (another model
or optimizer layout: `CheckpointMismatch`) is refused, since training on would silently start over; a
step that is *damaged* (a file deleted, truncated or overwritten, garbage metadata or data position) is
moved aside to `<step>.damaged-<time>` and the previous step is tried, since that is what a user would
do by hand. A background save that fails (disk full, permission lost) is reported at the next step by
`raise_if_save_failed` as `CheckpointWriteError`, naming the step and the directory.
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


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose state does not fit this run (another model or optimizer layout)."""


class CheckpointWriteError(OSError):
    """A background checkpoint save failed; the message names the step, the directory and the cause."""


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

    def restore_newest(
        self, abstract_state: Any, check_data: Any = None
    ) -> tuple[int | None, Any, dict | None]:
        """(step, state, data) of the newest step that restores, or (None, None, None) if none does.

        A step whose state does not fit `abstract_state` raises CheckpointMismatch (nothing is moved).
        A damaged step is named in one warning, moved aside (never deleted) and the previous one tried.
        `check_data(data)` may reject the restored data position: CheckpointMismatch refuses the run,
        any other exception counts as damage.
        """
        wanted = abstract_layout(abstract_state)
        for step in sorted(self.manager.all_steps(), reverse=True):
            step_dir = Path(self.directory) / str(step)
            part = "state/_METADATA"  # what is being read, to name it if it fails
            try:
                check_fits(step_dir, wanted)
                part = "data position (data/metadata)"
                data = self.restore_data(step)
                if check_data is not None:
                    check_data(data)
                part = "state arrays (state/)"
                state, data = self.restore(step, abstract_state)
                error = None
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - whatever a damaged file raises (tensorstore, json)
                error = e
            if not _on_any_process(error is not None):
                return step, state, data
            self._set_aside_damaged(step_dir, f"{part}: {short_reason(error)}" if error else None)
        return None, None, None

    def restore_data(self, step: int) -> dict:
        """The data position saved at `step` alone (a small JSON read)."""
        out = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        return dict(out["data"] or {})

    def _set_aside_damaged(self, step_dir: Path, why: str | None) -> None:
        target = step_dir.with_name(f"{step_dir.name}.damaged-{int(time.time())}")
        why = why or "it did not restore on another process"
        log.warning(
            "checkpoint step %s in %s does not restore (%s); moved aside to %s and trying the previous step",
            step_dir.name,
            self.directory,
            why,
            target.name,
        )
        if jax.process_index() == 0:
            step_dir.rename(target)
        _sync_processes("clip_jax.checkpoint: damaged step set aside")
        self.manager.reload()

    def raise_if_save_failed(self) -> None:
        """Raise CheckpointWriteError if a background save has failed; cheap enough for every step
        (it looks at orbax's finalize thread, whose failure orbax itself only raises at the next save,
        with thousands of lines of traceback)."""
        finalize = getattr(self.manager, "_finalize_thread", None)
        thread = finalize.map(lambda t: t) if finalize is not None else None
        if thread is not None and not thread.is_alive() and thread.exception is not None:
            self._raise_write_error(thread.step(), thread.exception)
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - the writer's own error, reported as one line
            self._raise_write_error(self._saving, e)

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force: bool = False) -> bool:
        """Start an asynchronous save of `state` (a pytree of jax.Arrays) at `step`; CheckpointWriteError
        if the previous save failed in the background or this one cannot start."""
        self.raise_if_save_failed()
        try:
            # orbax waits for the previous save here anyway; done first, its failure is named as its own.
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._raise_write_error(self._saving, e)
        self._saving = step
        try:
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state or {}),
                ),
                force=force,
            )
        except Exception as e:  # noqa: BLE001 - e.g. the step folder cannot be created
            self._raise_write_error(step, e)

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
        """Wait for the background save; CheckpointWriteError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if self._write_error is None:
                self._raise_write_error(self._saving, e)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    _write_error: CheckpointWriteError | None = None
    _saving: int | None = None  # the step of the last save started

    def _raise_write_error(self, step: int | None, error: BaseException) -> None:
        if self._write_error is None:
            kept = [s for s in self.manager.all_steps() if step is None or s < step]
            self._write_error = CheckpointWriteError(
                f"the checkpoint of step {step if step is not None else '(last save)'} could not be "
                f"written to {self.directory} ({short_reason(error)}); the last complete checkpoint "
                f"({'step ' + str(max(kept)) if kept else 'none yet'}) is intact: free space or fix the "
                "directory's permissions, then rerun the same command to resume from it"
            )
        raise self._write_error from error


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


def _on_any_process(flag: bool) -> bool:
    """`flag` or'ed over the processes, so that every process takes the same decision."""
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def short_reason(error: BaseException) -> str:
    """The gist of `error` in one short line: tensorstore's messages run to dozens of lines of spec."""
    text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
    if error.__cause__ is not None and str(error.__cause__).strip():
        text += ": " + short_reason(error.__cause__)
    text = text or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def abstract_layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'/'-joined path: (shape, dtype)} of a state tree's arrays, named as in orbax's metadata (a
    dataclass or namedtuple field by its name, a list or tuple entry by its index)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): (tuple(v.shape), str(v.dtype)) for path, v in leaves}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def saved_layout(step_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """abstract_layout of the state saved in a step folder, from its metadata (no array is read)."""
    from etils import epath

    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir) / "state").tree
    return abstract_layout(tree)


def check_fits(step_dir: Path, wanted: dict) -> None:
    """CheckpointMismatch naming the first differing entry if the step's state is not laid out as
    `wanted` (an abstract_layout); an unreadable metadata file raises whatever reading it raised."""
    saved = saved_layout(step_dir)
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        key = differ[0]
        raise CheckpointMismatch(
            f"{step_dir} does not fit this run's config: {key} is {_describe(saved.get(key))} in the "
            f"checkpoint, {_describe(wanted.get(key))} here ({len(differ)} entries differ)"
        )


def _describe(entry: tuple | None) -> str:
    return "absent" if entry is None else f"{entry[1]}{list(entry[0])}"


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


def restore_params(path: str | os.PathLike, expected: Any = None, which: str = "params") -> tuple[Any, Path]:
    """The params (host numpy arrays, per-layer layout) of the newest complete step of a training run.

    `which` is the state field to read: "params", or "ema_params" for the EMA of a run trained with
    config.ema_decay (ValueError naming the step if it has none).

    `path` is a workdir (holding checkpoints/), a checkpoint directory or one step folder. With `expected`
    (a tree of arrays or ShapeDtypeStructs, e.g. the model's `jax.eval_shape` of init), the saved shapes
    are compared first, from the checkpoint's metadata, and the first key that differs is named with
    both shapes, before any array is read.
    """
    import numpy as np

    from clip_jax.models import unstack_layers

    # orbax reads no metadata from a relative path (its tree comes back None): make every path absolute.
    root = Path(os.path.abspath(path))
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
        _check_has(saved, which, step_dir)
        saved = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved.get(which, saved))
        _check_shapes(jax.eval_shape(unstack_layers, saved), expected, item)
    state = checkpointer.restore(item)
    _check_has(state, which, step_dir)
    params = state[which] if which in state else state
    return unstack_layers(jax.tree.map(np.asarray, params)), step_dir


def _check_has(state: Any, which: str, step_dir: Path) -> None:
    """ValueError unless a saved state holds `which` (a bare params tree, from convert, has only params)."""
    if which != "params" and (not isinstance(state, dict) or which not in state):
        raise ValueError(
            f"{step_dir} holds no {which}: it was not trained with EMA (config.ema_decay > 0); "
            "use its params instead"
        )


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
