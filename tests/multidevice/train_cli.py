"""The trainer's command line (`python -m clip_jax.train ...`) with the hooks its tests need.

Same flags, same `main`, same code path as the real CLI. Environment variables add faults and delays:
  CLIP_JAX_TEST_BATCH_DELAY  seconds to sleep before each batch, so that a signal sent from outside
                             lands mid-run instead of after a run that is already over,
  CLIP_JAX_TEST_SIGTERM_AT   batch position at which the process sends itself SIGTERM (the step that
                             consumes that batch still runs),
  CLIP_JAX_TEST_NAN_FROM     batch position from which the images are NaN, so the loss becomes NaN,
  CLIP_JAX_TEST_RECORD_SAVES if set, the params of every checkpoint save go to saved_params_STEP.npz.
The batch of step s (1-based) is the one at position s - 1.

It records into the workdir (process 0 writes; params are gathered from all processes):
  initial_params.npz   the params a fresh run starts from,
  final_params.npz     the params train() returns, keyed by parameter path,
  placement.json       the mesh and, per final parameter, its PartitionSpec and per-device shard shape,
  restored.json, restored_params.npz   what a resumed run restored: step, data state, placement, params.
"""

import os
import sys

# tensorboardX imports torch when it is installed (seconds of CPU per process); the trainer uses
# nothing of it, and the tests start many processes.
sys.modules["torch"] = None

import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import clip_jax.train.loop as train_module  # noqa: E402
from clip_jax.checkpoint import Checkpointer  # noqa: E402
from clip_jax.sharding import dict_key_path  # noqa: E402
from clip_jax.train import cli  # noqa: E402
from clip_jax.train.random_batches import RandomBatches  # noqa: E402

WORKDIR = [""]  # the run's --workdir, as train() received it


def workdir_file(name: str) -> str:
    return os.path.join(WORKDIR[0], name)


def flat(tree) -> dict:
    return {dict_key_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_params(params, name: str) -> None:
    """Write params to WORKDIR/name as numpy; a collective in multi-process runs."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        np.savez(workdir_file(name), **{k: np.asarray(v) for k, v in flat(params).items()})


def placement(params) -> dict:
    leaves = flat(params)
    any_leaf = next(iter(leaves.values()))
    return {
        "mesh": dict(any_leaf.sharding.mesh.shape),
        "params": {
            k: {"spec": list(v.sharding.spec), "shard_shape": list(v.addressable_shards[0].data.shape)}
            for k, v in leaves.items()
        },
        "all_replicated": all(v.sharding.is_fully_replicated for v in leaves.values()),
    }


def write_json(obj, name: str) -> None:
    if jax.process_index() == 0:
        with open(workdir_file(name), "w") as f:
            json.dump(obj, f)


def install_hooks() -> None:
    delay = float(os.environ.get("CLIP_JAX_TEST_BATCH_DELAY", "0"))
    sigterm_at = int(os.environ.get("CLIP_JAX_TEST_SIGTERM_AT", "-1"))
    nan_from = int(os.environ.get("CLIP_JAX_TEST_NAN_FROM", "-1"))
    record_saves = bool(os.environ.get("CLIP_JAX_TEST_RECORD_SAVES"))
    next_batch = RandomBatches.__next__

    def hooked_next(self):
        position = self.position
        if delay:
            time.sleep(delay)
        if position == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        batch = next_batch(self)
        if 0 <= nan_from <= position:
            batch["image"] = np.full_like(batch["image"], np.nan)
        return batch

    RandomBatches.__next__ = hooked_next

    save, restore = Checkpointer.save, Checkpointer.restore

    def hooked_save(self, step, state, *args, **kwargs):
        if record_saves:
            save_params(state.params, f"saved_params_{step}.npz")
        return save(self, step, state, *args, **kwargs)

    def hooked_restore(self, step, abstract_state):
        state, data_state = restore(self, step, abstract_state)
        save_params(state.params, "restored_params.npz")
        write_json({"step": step, "data_state": data_state, **placement(state.params)}, "restored.json")
        return state, data_state

    Checkpointer.save, Checkpointer.restore = hooked_save, hooked_restore

    train, initial_params = train_module.train, train_module._initial_params

    def hooked_initial_params(*args, **kwargs):
        params = initial_params(*args, **kwargs)
        save_params(params, "initial_params.npz")
        return params

    def hooked_train(config, workdir, **kwargs):
        WORKDIR[0] = workdir
        state = train(config, workdir, **kwargs)
        save_params(state.params, "final_params.npz")
        write_json(placement(state.params), "placement.json")
        return state

    train_module._initial_params = hooked_initial_params
    train_module.train = hooked_train


if __name__ == "__main__":
    install_hooks()
    sys.exit(cli.run())
