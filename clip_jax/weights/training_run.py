"""A clip_jax training run as a weights source: its newest complete step, with its model from config.json.

The trainer writes the resolved config into the workdir (`WORKDIR/config.json`, where `model` is a name
or an inline dict) and its checkpoints under `WORKDIR/checkpoints/<step>/`. Any of the three folders (the
workdir, its checkpoints/ folder, one step folder) names the run, so that the evaluation scripts,
`clip_jax.predict` and `clip_jax.convert` need no `--model` for a run whose model has no name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clip_jax.cli_errors import UserError
from clip_jax.models.config import CLIPConfig, get_model_config

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"


def is_step_dir(path: str | os.PathLike) -> bool:
    """An orbax step folder of the trainer (its state item, or orbax's finalisation marker)."""
    path = Path(path)
    return (path / "state").is_dir() or (path / "_CHECKPOINT_METADATA").is_file()


def is_training_run(path: str | os.PathLike) -> bool:
    """True for a training workdir (checkpoints/ or the trainer's metrics.jsonl), its checkpoints/
    folder (step folders inside) or one step folder; False for weights files and model folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / CHECKPOINTS_DIR).is_dir() or (path / "metrics.jsonl").is_file() or is_step_dir(path):
        return True
    return any(is_step_dir(child) for child in path.iterdir() if child.name.isdigit())


def workdir_of(path: str | os.PathLike) -> Path:
    """The workdir of a run given as its workdir, its checkpoints/ folder or one of its step folders."""
    path = Path(os.path.abspath(path))
    if is_step_dir(path) and path.parent.name == CHECKPOINTS_DIR:
        return path.parent.parent
    if path.name == CHECKPOINTS_DIR and not (path / CHECKPOINTS_DIR).is_dir():
        return path.parent
    return path


def run_config(path: str | os.PathLike) -> dict | None:
    """The run's resolved training config (its config.json as a dict), None when it has none."""
    file = workdir_of(path) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: not a readable training config ({e}); pass --model instead") from e
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(f"{file} has no 'model' field: not a clip_jax training config; pass --model")
    return config


def run_model_config(path: str | os.PathLike) -> tuple[CLIPConfig | None, Path]:
    """(the model config of the run's config.json, that file); None when the run has no config.json
    (checkpoints copied without it)."""
    from clip_jax.models.config import resolve_model_config

    file = workdir_of(path) / CONFIG_FILE
    config = run_config(path)
    if config is None:
        return None, file
    try:
        return resolve_model_config(config["model"]), file
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{file}: its model cannot be built ({e})") from e


def load_training_run(
    path: str | os.PathLike,
    name: str | CLIPConfig | None = None,
    quick_gelu: bool | None = None,
    *,
    ema: bool = False,
) -> tuple[CLIPConfig, dict, Path]:
    """(model config, per-layer numpy params, step folder) of the newest complete step of a run; with
    `ema` its EMA params (a run trained with config.ema_decay) instead of its params.

    The model is the run's config.json's; `name` (a model name or config), when given, must be that
    same model, and is needed only for a run without config.json. Relative and absolute paths work.
    """
    from clip_jax.checkpoint import restore_params
    from clip_jax.models.clip import param_shapes
    from clip_jax.models.config import config_diff, describe

    run_cfg, file = run_model_config(path)
    given = get_model_config(name) if isinstance(name, str) else name
    if run_cfg is None and given is None:
        raise UserError(
            f"{path} is a training run without {file.name} (looked for {file}): pass --model, the model "
            "it was trained with"
        )
    shown = name if isinstance(name, str) else "the given config"
    if run_cfg is not None and given is not None and given != run_cfg:
        diff = ", ".join(f"{k} {a} (run: {b})" for k, a, b in _diff_items(config_diff(given, run_cfg)))
        raise UserError(
            f"--model {shown} is not the model of the training run in {file} ({describe(run_cfg)}; "
            f"differs in {diff}): leave --model out to use the run's"
        )
    cfg = run_cfg or given
    if quick_gelu is not None and quick_gelu != cfg.quick_gelu:
        raise UserError(
            f"--{'' if quick_gelu else 'no-'}quick-gelu contradicts the training run's model "
            f"(quick_gelu={cfg.quick_gelu}, {file}): leave it out"
        )
    try:
        which = "ema_params" if ema else "params"
        params, step_dir = restore_params(os.path.abspath(path), expected=param_shapes(cfg), which=which)
    except FileNotFoundError:
        raise  # no complete step: the message names the folder
    except ValueError as e:
        if "does not hold this model" in str(e) or "holds no ema_params" in str(e):
            raise  # names the key and both shapes, or the step without EMA
        raise _damaged(path, e) from e
    except Exception as e:  # orbax and tensorstore raise their own types too
        raise _damaged(path, e) from e
    return cfg, params, step_dir


def _damaged(path: str | os.PathLike, error: Exception) -> UserError:
    # tensorstore's first line is the gist; what follows it is a dump of its spec.
    first = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
    return UserError(
        f"cannot restore the params of training run {path} ({type(error).__name__}: {first}); if its "
        "newest step is damaged, name an older step folder (checkpoints/<step>)"
    )


def _diff_items(diff: dict[str, tuple[Any, Any]], most: int = 4) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in list(diff.items())[:most]]
