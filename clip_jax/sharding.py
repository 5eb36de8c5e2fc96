"""Device mesh and logical-axis sharding rules.

Parameters and activations are annotated with logical axis names in the model code; the rules below map
them onto the three mesh axes:
  data    pure data parallelism (params replicated),
  fsdp    data parallelism with params/optimizer state sharded along their `embed` axis (ZeRO-3),
  tensor  Megatron-style tensor parallelism over attention heads and the MLP hidden dimension.
The batch is split over (data, fsdp).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("joint", None),
    ("layers", None),
    # a ResNet's conv output channels and BatchNorm vectors: sharded like `embed` (ZeRO-3)
    ("channels", "fsdp"),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Fill in one -1 entry with the remaining devices and check that the product is the device count."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
    for k, v in sizes.items():
        if v != -1 and v < 1:
            raise ValueError(f"config.mesh.{k} must be a positive integer or -1, got {v}")
    fixed = int(np.prod([v for v in sizes.values() if v != -1]))
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh {sizes}: the fixed axes ({fixed} devices) do not divide the {num_devices} devices"
            )
        sizes[free[0]] = num_devices // fixed
    if int(np.prod(list(sizes.values()))) != num_devices:
        raise ValueError(
            f"config.mesh {sizes} needs {int(np.prod(list(sizes.values())))} devices but {num_devices} are present"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types, which flax's logical constraints need."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_sharding(boxed_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings for a tree of nn.Partitioned (e.g. jax.eval_shape of model.init); unboxed leaves
    (and scalars such as optax's step count) are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s if isinstance(s, P) else P()),
        mesh_specs,
        is_leaf=lambda x: isinstance(x, P) or x is None,
    )


def strip_boxes(tree: Any) -> Any:
    """Replace nn.Partitioned boxes by their values without applying sharding constraints (which
    nn.unbox does, and which fails outside jit for abstract values)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def dict_key_path(path: Sequence[Any]) -> str:
    """'/'-joined dict keys of a pytree key path (attribute and sequence keys of wrappers are skipped)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp; everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shardings_by_param_path(abstract_tree: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree that embeds copies of the params tree (TrainState, optax states).

    A leaf whose dict-key path ends with a parameter's path (e.g. opt_state/.../mu/visual/proj) and has
    that parameter's shape gets the parameter's sharding; everything else (step counts, RNG) is
    replicated. This keeps Adam's moments sharded exactly like the parameters they belong to.
    """
    by_path = {}
    for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
        by_path[dict_key_path(path)] = s

    def pick(path, leaf):
        keys = dict_key_path(path).split("/")
        for i in range(len(keys)):
            s = by_path.get("/".join(keys[i:]))
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)
