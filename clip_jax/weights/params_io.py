"""Save and load converted CLIP params as an orbax checkpoint with the model config beside it.

Layout of a directory written by `save_params`:
    DIR/clip_config.json   CLIPConfig.to_dict() (plus a format version)
    DIR/params/            orbax StandardCheckpointer tree of the per-layer (unscanned) params
Params are always stored per layer (`resblocks_{i}`), whatever `scan` the model that saved them used, so
that one file serves both; `clip_jax.models.stack_layers` turns them into the scanned layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

from clip_jax.models.config import CLIPConfig
from clip_jax.models.transformer import unstack_layers

CONFIG_FILE = "clip_config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def is_params_dir(path: str | os.PathLike) -> bool:
    """True for a directory written by `save_params`."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def save_params(directory: str | os.PathLike, params: dict, cfg: CLIPConfig, *, force: bool = False) -> Path:
    """Write `params` (per-layer or scanned) and `cfg` to `directory`; returns its absolute path.

    An existing checkpoint there is an error unless `force`, since overwriting weights by accident is
    costly to notice.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if (directory / PARAMS_DIR).exists() and not force:
        raise FileExistsError(f"{directory} already holds a params checkpoint; pass force=True to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    params = unstack_layers(params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_DIR, params, force=force)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump({"format_version": FORMAT_VERSION, "model": cfg.to_dict()}, f, indent=2)
    return directory


def load_config(directory: str | os.PathLike) -> CLIPConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no params checkpoint at {Path(directory).absolute()}: {path.name} is missing"
        )
    with open(path, encoding="utf-8") as f:
        return CLIPConfig.from_dict(json.load(f)["model"])


def load_params(directory: str | os.PathLike, abstract_params: Any = None) -> tuple[CLIPConfig, dict]:
    """Read `(cfg, params)` written by `save_params`; params are per-layer.

    `abstract_params`, a per-layer tree of `jax.ShapeDtypeStruct` (with shardings, dtypes), restores
    straight onto devices in that layout; without it the arrays come back as stored, on the default device.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    cfg = load_config(directory)
    if not (directory / PARAMS_DIR).is_dir():
        raise FileNotFoundError(f"no params checkpoint at {directory}: {PARAMS_DIR}/ is missing")
    with ocp.StandardCheckpointer() as ckptr:
        if abstract_params is None:
            meta = ckptr.metadata(directory / PARAMS_DIR)
            tree = getattr(meta, "item_metadata", meta)
            abstract_params = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        params = ckptr.restore(directory / PARAMS_DIR, abstract_params)
    return cfg, _to_dict(params)


def _to_dict(tree: Any) -> Any:
    """orbax may hand back its own mapping types; the model code expects plain dicts."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree
