"""The trainer on 8 simulated CPU devices, for tests/test_train_multidevice.py.

Runs the same 3-step tiny config on one device and on the meshes (data=8), (fsdp=8) and
(data=2, fsdp=2, tensor=2), then resumes the (data=8) run's step-2 checkpoint on the (2, 2, 2) mesh.
Writes OUT/results.json (losses, parameter differences, shardings) and OUT/params_data8.npz (the
(data=8) run's final parameters, which the 2-process run is compared with). Usage: train_meshes.py OUT

Run as a script (its own process): XLA_FLAGS must be set before jax is imported.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# tensorboardX imports torch when it is installed (seconds of CPU); the trainer uses nothing of it.
sys.modules["torch"] = None

import json  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from clip_jax import checkpoint as checkpoint_module  # noqa: E402
from clip_jax.config_utils import default_config  # noqa: E402
from clip_jax.sharding import dict_key_path  # noqa: E402
from clip_jax.train import train  # noqa: E402

MESHES = {"data=8": (8, 1, 1), "fsdp=8": (1, 8, 1), "data=2,fsdp=2,tensor=2": (2, 2, 2)}
# Parameters whose placement the tests check: an fsdp-sharded projection, the MLP of a resblock (embed
# over fsdp, hidden over tensor), attention (heads over tensor) and a replicated scalar.
SHOWN = (
    "visual/proj",
    "visual/transformer/resblocks_0/mlp/c_fc/kernel",
    "visual/transformer/resblocks_0/mlp/c_proj/kernel",
    "text/transformer/resblocks_0/attn/qkv/kernel",
    "logit_scale",
)


def make_config(mesh=(-1, 1, 1)):
    c = default_config()
    c.model = "tiny"
    c.batch_size = 16
    c.total_steps = 3
    c.lr = 1e-4
    c.warmup_steps = 1
    c.log_every = 1
    c.checkpoint_every = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def flat(params) -> dict:
    return {dict_key_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def to_host(params) -> dict:
    return {k: np.asarray(v) for k, v in flat(params).items()}


def placement(params) -> dict:
    """Spec, per-device shard shape and replication of the SHOWN parameters (and whether all are whole)."""
    leaves = flat(params)
    shown = {
        k: {
            "spec": str(leaves[k].sharding.spec),
            "shard_shape": list(leaves[k].addressable_shards[0].data.shape),
        }
        for k in SHOWN
    }
    shown["all_replicated"] = all(v.sharding.is_fully_replicated for v in leaves.values())
    return shown


def losses(workdir: str) -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def max_abs_diff(a: dict, b: dict) -> tuple[float, str]:
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in b}
    worst = max(diffs, key=diffs.get)
    return diffs[worst], worst


# Record what the trainer saves at step 2 and what it restores, to compare the two across meshes.
saved_at_2, restored = {}, {}
_save, _restore = checkpoint_module.Checkpointer.save, checkpoint_module.Checkpointer.restore


def recording_save(self, step, state, *args, **kwargs):
    if step == 2:
        saved_at_2[self.directory] = to_host(state.params)
    return _save(self, step, state, *args, **kwargs)


def recording_restore(self, step, abstract_state):
    state, data_state = _restore(self, step, abstract_state)
    restored.update(
        step=step, params=to_host(state.params), placement=placement(state.params), data=data_state
    )
    return state, data_state


checkpoint_module.Checkpointer.save = recording_save
checkpoint_module.Checkpointer.restore = recording_restore


def main(out: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    results = {"devices": len(jax.devices()), "meshes": {}}

    ref_dir = os.path.join(out, "single")
    ref = to_host(train(make_config((1, 1, 1)), ref_dir, devices=jax.devices()[:1]).params)
    results["single_losses"] = losses(ref_dir)

    finals = {}
    for name, shape in MESHES.items():
        workdir = os.path.join(out, name)
        state = train(make_config(shape), workdir)
        finals[name] = to_host(state.params)
        diff, worst = max_abs_diff(finals[name], ref)
        results["meshes"][name] = {
            "mesh": dict(state.params["logit_scale"].sharding.mesh.shape),
            "losses": losses(workdir),
            "max_abs_param_diff": diff,
            "worst_param": worst,
            "placement": placement(state.params),
        }
    np.savez(os.path.join(out, "params_data8.npz"), **finals["data=8"])

    # Restore the (data=8) run's step-2 checkpoint on the (2, 2, 2) mesh and run its last step there.
    src, dst = os.path.join(out, "data=8"), os.path.join(out, "resharded")
    shutil.copytree(os.path.join(src, "checkpoints"), os.path.join(dst, "checkpoints"))
    shutil.rmtree(os.path.join(dst, "checkpoints", "3"))
    state = train(make_config(MESHES["data=2,fsdp=2,tensor=2"]), dst)
    saved = saved_at_2[os.path.abspath(os.path.join(src, "checkpoints"))]
    final = to_host(state.params)
    results["resharded"] = {
        "restored_step": restored["step"],
        "restored_data_state": restored["data"],
        "restored_placement": restored["placement"],
        "params_differing_from_saved": [
            k for k in saved if not np.array_equal(saved[k], restored["params"][k])
        ],
        "losses": losses(dst),
        "max_abs_diff_vs_data8": max_abs_diff(final, finals["data=8"])[0],
        "max_abs_diff_vs_222": max_abs_diff(final, finals["data=2,fsdp=2,tensor=2"])[0],
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
