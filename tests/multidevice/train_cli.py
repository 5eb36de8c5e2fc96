"""The trainer's command line (`python -m clip_jax.train ...`) with the hooks its tests need.

Same flags, same `main`, same code path as the real CLI. Environment variables add faults and delays:
  CLIP_JAX_TEST_BATCH_DELAY  seconds to sleep before each batch, so that a signal sent from outside
                             lands mid-run instead of after a run that is already over,
  CLIP_JAX_TEST_SIGTERM_AT   batch position at which the process sends itself SIGTERM (the step that
                             consumes that batch still runs),
  CLIP_JAX_TEST_NAN_FROM     batch position from which the images are NaN, so the loss becomes NaN.
The batch of step s (1-based) is the one at position s - 1.

Process 0 also writes the parameters the run starts from (when it initialises rather than resumes)
and ends with to WORKDIR/initial_params.npz and WORKDIR/final_params.npz, keyed by parameter path.
"""

import os
import sys

# tensorboardX imports torch when it is installed (about 10 s of CPU per process); the trainer uses
# nothing of it, and the tests start many processes.
sys.modules["torch"] = None

import signal  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import clip_jax.train as train_module  # noqa: E402
from clip_jax.random_batches import RandomBatches  # noqa: E402
from clip_jax.sharding import dict_key_path  # noqa: E402


def gather_to_host(tree):
    """Numpy copies of a tree of (possibly multi-process) global arrays; a collective in multi-process runs."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def save_params(params, path: str) -> None:
    host = gather_to_host(params)
    if jax.process_index() == 0:
        flat = {dict_key_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(host)[0]}
        np.savez(path, **flat)


def install_hooks() -> None:
    delay = float(os.environ.get("CLIP_JAX_TEST_BATCH_DELAY", "0"))
    sigterm_at = int(os.environ.get("CLIP_JAX_TEST_SIGTERM_AT", "-1"))
    nan_from = int(os.environ.get("CLIP_JAX_TEST_NAN_FROM", "-1"))
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

    train, initial_params = train_module.train, train_module._initial_params

    def hooked_initial_params(config, model, init_params, rng, param_shardings):
        params = initial_params(config, model, init_params, rng, param_shardings)
        save_params(params, os.path.join(flags.FLAGS.workdir, "initial_params.npz"))
        return params

    def hooked_train(config, workdir, **kwargs):
        state = train(config, workdir, **kwargs)
        save_params(state.params, os.path.join(workdir, "final_params.npz"))
        return state

    train_module._initial_params = hooked_initial_params
    train_module.train = hooked_train


if __name__ == "__main__":
    install_hooks()
    train_module._define_flags()
    app.run(train_module.main, argv=sys.argv)
