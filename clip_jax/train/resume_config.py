"""A resumed run's config against the one its workdir was trained with, checked before anything is written.

The workdir's config.json is the config of the run's last start. Resuming with a different model is
refused (the checkpoint cannot be trained on as another model; a new --workdir can). Other changes (lr,
schedule, batch size, weight decay, data, ...) are legitimate ways to continue a run, but they change what
the run is: they are logged with old and new values and appended to the workdir's config_history.jsonl,
one record per start, and `config.strict_resume` refuses them instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import ml_collections

from clip_jax.cli_errors import UserError

log = logging.getLogger("clip_jax.train")

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields that change how a run is watched, saved, placed or started, not what it trains from here on:
# strict_resume lets them change (a new mesh reshards the checkpoint; init_* only matter at step 0;
# remat trades memory for compute on the same values).
OPERATIONAL_FIELDS = frozenset(
    {
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "evals",
        "prefetch",
        "strict_resume",
        "report_to",
        "wandb_project",
        "mesh",
        "remat_policy",
        "init_from",
        "init_from_only",
        "init_from_model",
        "init_from_ema",
        "branch_from",  # like init_from, read only when the run starts at its branch point
    }
)


@dataclasses.dataclass
class ConfigChanges:
    """Fields (`config.a.b`) whose value differs from the workdir's saved config: {field: (old, new)}."""

    changes: dict[str, tuple[Any, Any]]
    saved_config_found: bool

    @property
    def model(self) -> dict[str, tuple[Any, Any]]:
        return {k: v for k, v in self.changes.items() if k == "config.model" or k.startswith("config.model.")}

    @property
    def training(self) -> dict[str, tuple[Any, Any]]:
        """Changes other than the model's that change what is trained (all but OPERATIONAL_FIELDS)."""
        return {
            k: v
            for k, v in self.changes.items()
            if k not in self.model and k.split(".")[1] not in OPERATIONAL_FIELDS
        }


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    """'config.lr: 0.001 -> 0.002, ...' in field order."""
    return ", ".join(
        f"{k}: {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in sorted(changes.items())
    )


def config_as_json(config: ml_collections.ConfigDict) -> dict:
    """The config as config.json holds it (tuples become lists, the model its named or inline form)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def read_saved_config(workdir: str) -> dict | None:
    """The workdir's config.json, or None if it has none (a fresh workdir) or it does not read (then
    the checkpoint's own shapes are the only check, and a warning says so)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s does not read (%s); the config cannot be compared with the saved run's", path, e)
        return None
    return saved if isinstance(saved, dict) else None


def config_changes(saved: dict | None, config: ml_collections.ConfigDict) -> ConfigChanges:
    """What `config` changes with respect to the saved config (a model compared field by field, after
    resolving names, so "tiny" and its inline dict are the same model)."""
    if saved is None:
        return ConfigChanges({}, saved_config_found=False)
    new = config_as_json(config)
    old_flat, new_flat = _flatten(saved, "config"), _flatten(new, "config")
    old_model, new_model = _resolved_model(saved.get("model")), _resolved_model(new.get("model"))
    if old_model is not None and new_model is not None:
        old_flat = {k: v for k, v in old_flat.items() if not k.startswith("config.model")}
        new_flat = {k: v for k, v in new_flat.items() if not k.startswith("config.model")}
        old_flat.update(_flatten(old_model, "config.model"))
        new_flat.update(_flatten(new_model, "config.model"))
    # A field added to the schema after the run was saved, left at its default, changes nothing.
    from clip_jax.train.config import default_config

    defaults = _flatten(config_as_json(default_config()), "config")
    missing = object()
    changes = {
        k: (old_flat.get(k), new_flat.get(k))
        for k in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(k, missing) != new_flat.get(k, missing)
        and not (k not in old_flat and new_flat.get(k, missing) == defaults.get(k, missing))
    }
    return ConfigChanges(changes, saved_config_found=True)


def check_resume_config(config: ml_collections.ConfigDict, workdir: str, resuming: bool) -> ConfigChanges:
    """The changes of `config` from the workdir's saved run; when `resuming` (the workdir has a
    checkpoint), a changed model, or with config.strict_resume any training change, raises UserError
    naming each field with its old and new value. Reads only: nothing in the workdir is written."""
    changes = config_changes(read_saved_config(workdir), config)
    if not resuming:
        return changes
    if changes.model:
        raise UserError(
            f"{os.path.join(workdir, CONFIG_FILE)} is a run of another model ({describe(changes.model)}); "
            "resume with the saved config.model, or start a new --workdir to train this one"
        )
    if config.get("strict_resume", False) and changes.training:
        raise UserError(
            f"config.strict_resume: this config changes the run in {workdir}: {describe(changes.training)}; "
            "set these fields back, or resume without --config.strict_resume to continue with them"
        )
    return changes


def record_start(workdir: str, config: ml_collections.ConfigDict, changes: ConfigChanges, step: int) -> None:
    """Write the config as the workdir's config.json and append this start to config_history.jsonl;
    log the changes of a resumed run."""
    if step and changes.changes:
        log.warning("resuming from step %d with a changed config: %s", step, describe(changes.changes))
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "step": step,
        "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.changes.items()},
    }
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def _resolved_model(model: Any) -> dict | None:
    from clip_jax.train.config import resolve_model_config

    try:
        return json.loads(json.dumps(resolve_model_config(model).to_dict()))
    except (ValueError, TypeError, KeyError):
        return None


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}"))
    return out
