"""Print, as JSON, the collectives XLA emits for one residual block on a (data=2, tensor=4) mesh.

Run in its own process: the 8 simulated devices must be set before jax starts.
"""

import json
import os
import re
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from clip_jax.models.transformer import ResidualAttentionBlock  # noqa: E402
from clip_jax.sharding import LOGICAL_RULES, logical_to_mesh_sharding, make_mesh  # noqa: E402

COLLECTIVE = re.compile(r"= (\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)\(")


def main() -> None:
    mesh = make_mesh(data=2, fsdp=1, tensor=4)
    block = ResidualAttentionBlock(heads=8, mlp_width=1024)
    x = jnp.zeros((4, 10, 256))
    boxed = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), x))
    shardings = nn.meta.unbox(logical_to_mesh_sharding(boxed, mesh))
    params = jax.tree.map(
        lambda a, s: jax.device_put(jnp.zeros(a.shape, a.dtype), s), nn.meta.unbox(boxed), shardings
    )
    x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))

    def forward(p, x):
        with nn.logical_axis_rules(LOGICAL_RULES):
            return block.apply(p, x)[0]

    out = {}
    with jax.set_mesh(mesh):
        for name, fn in (("forward", forward), ("grad", jax.grad(lambda p, x: jnp.sum(forward(p, x) ** 2)))):
            hlo = jax.jit(fn).lower(params, x).compile().as_text()
            out[name] = [[op, shape] for shape, op in COLLECTIVE.findall(hlo)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
