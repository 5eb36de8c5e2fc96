"""A sweep's runs, read from its config file: `sweep(add)` next to `get_config(arg)` (big_vision's idiom).

    def sweep(add):
        for run in product(lr=[1e-3, 3e-4], **{"arg.loss": ["softmax", "sigmoid"]}):
            add(**run)

Each `add(**overrides)` is one run. A key is a config field path (`lr`, `model.vision.width`,
`evals.shape`) or `arg.KEY`, a variable of the config file's argument (`FILE:KEY=VALUE,...`); DROP as a
value removes an entry. Runs are named from their overrides, so a name is stable across edits of the
sweep and two runs never share a workdir.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

from clip_jax.cli_errors import UserError
from clip_jax.train.overrides import DROP, apply_overrides, format_value

ARG_PREFIX = "arg."
_SAFE = re.compile(r"^[A-Za-z0-9._+-]*$")
_MAX_NAME = 120


def product(*parts: Iterable[Mapping[str, Any]], **axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Every combination: of the override dicts in each part (e.g. a `zipped(...)`) and of the values
    of each keyword axis (`lr=[1e-3, 3e-4]`), the first varying slowest."""
    groups = [list(p) for p in parts] + [[{k: v} for v in values] for k, values in axes.items()]
    return [_merge(combo) for combo in itertools.product(*groups)]


def zipped(*parts: Iterable[Mapping[str, Any]], **axes: Iterable[Any]) -> list[dict[str, Any]]:
    """The i-th override dict of every part and the i-th value of every axis together; all the same
    length (`zipped(lr=[1e-3, 5e-4], warmup_steps=[100, 200])` is two runs)."""
    groups = [list(p) for p in parts] + [[{k: v} for v in values] for k, values in axes.items()]
    lengths = {len(g) for g in groups}
    if len(lengths) > 1:
        raise ValueError(f"zipped: parts and axes have different lengths {sorted(lengths)}")
    return [_merge(combo) for combo in zip(*groups, strict=True)]


def _merge(dicts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if k in out and out[k] != v:
                raise ValueError(f"{k} is set twice, to {out[k]!r} and {v!r}")
            out[k] = v
    return out


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a sweep: its overrides in the order given (`arg.*` keys and field paths)."""

    overrides: dict[str, Any]

    @property
    def arg(self) -> dict[str, Any]:
        return {k[len(ARG_PREFIX) :]: v for k, v in self.overrides.items() if k.startswith(ARG_PREFIX)}

    @property
    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.overrides.items() if not k.startswith(ARG_PREFIX)}

    @property
    def name(self) -> str:
        return run_name(self.overrides)


def run_name(overrides: Mapping[str, Any]) -> str:
    """`batch=64,loss=sigmoid,lr=0.001` from the overrides, sorted by key (`arg.` left out), or "base"
    for none. Where that text would be lossy (characters a path cannot hold, ambiguous values, too long)
    a hash of the overrides is appended, so distinct runs always get distinct names."""
    if not overrides:
        return "base"
    items, lossy, shown = [], False, set()
    for key in sorted(overrides, key=_shown_key):
        short = _shown_key(key)
        lossy |= short in shown
        shown.add(short)
        text = _name_value(overrides[key])
        lossy |= overrides[key] == "DROP"  # the string would read like DROP
        if not _SAFE.match(text) or not _SAFE.match(short):
            lossy = True
            text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")
            short = re.sub(r"[^A-Za-z0-9._+-]+", "_", short)
        items.append(f"{short}={text}")
    name = ",".join(items)
    if lossy or len(name) > _MAX_NAME:
        digest = hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME]}-{digest}"
    return name


def _shown_key(key: str) -> str:
    return key[len(ARG_PREFIX) :] if key.startswith(ARG_PREFIX) else key


def _name_value(value: Any) -> str:
    if value is DROP:
        return "DROP"
    if isinstance(value, str):
        # A string that reads as another literal ("1", "None") is quoted, so it never names like one.
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return repr(value)
    if isinstance(value, float) and not value.is_integer() and float(f"{value:g}") == value:
        return f"{value:g}"
    return format_value(value)


def _canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps({k: repr(v) for k, v in sorted(overrides.items())}, sort_keys=True)


@dataclasses.dataclass
class Sweep:
    """A config file's sweep: the file, its base argument (`FILE:arg`), and its runs in order."""

    config_file: str
    base_arg: str
    runs: list[Run]

    def resolve(self, run: Run, common: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
        """The run's config: get_config(base arg + the run's arg), then `common` (the launcher's
        --set/--drop), then the run's field overrides."""
        module = load_module(self.config_file)
        config = (
            module.get_config(self.arg_string(run)) if _takes_arg(module.get_config) else module.get_config()
        )
        if common:
            config = apply_overrides(config, common)
        return apply_overrides(config, run.fields)

    def arg_string(self, run: Run) -> str | None:
        """The config argument for `run`: `KEY=VALUE,...` (clip_jax.train.config.parse_arg reads it)."""
        own = [f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in run.arg.items()]
        return (
            ",".join(filter(None, [self.base_arg, *own])) or None
        )  # parse_arg: the last value of a key wins

    def train_command(self, run: Run, workdir: str, common: Mapping[str, Any] | None = None) -> str:
        """The single-run command line equivalent to `run` (e.g. for a TPU pod's workers)."""
        arg = self.arg_string(run)
        cmd = ["python", "-m", "clip_jax.train", "--config", self.config_file + (f":{arg}" if arg else "")]
        cmd += ["--workdir", workdir]
        for path, value in {**(common or {}), **run.fields}.items():
            cmd += ["--drop", path] if value is DROP else ["--set", f"{path}={format_value(value)}"]
        return shlex.join(cmd)


def _takes_arg(fn: Any) -> bool:
    return bool(inspect.signature(fn).parameters)


def load_sweep(config: str) -> Sweep:
    """The sweep of `FILE[:arg]`: the runs its `sweep(add)` adds; ValueError if it has none or if two
    runs have the same overrides."""
    path, _, arg = config.partition(":")
    module = load_module(path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"{path} defines no sweep(add) function")
    runs: list[Run] = []
    names: dict[str, Run] = {}

    def add(**overrides: Any) -> None:
        run = Run(dict(overrides))
        if run.name in names:
            raise ValueError(f"{path}: run {run.name} is added twice")
        names[run.name] = run
        runs.append(run)

    try:
        module.sweep(add)
    except ValueError:
        raise  # add()'s and product()'s own, which name the run or the key
    except Exception as e:  # the user's sweep function failed: name its file (--debug: the traceback)
        raise UserError(f"{path}: sweep(add) failed: {type(e).__name__}: {e}") from e
    if not runs:
        raise ValueError(f"{path}: sweep(add) added no runs")
    # A name shows `arg.KEY` as KEY: a field of the same name elsewhere in the sweep would read alike.
    shown: dict[str, set[str]] = {}
    for run in runs:
        for key in run.overrides:
            shown.setdefault(_shown_key(key), set()).add(key)
    for short, keys in shown.items():
        if len(keys) > 1:
            raise ValueError(
                f"{path}: {sorted(keys)} would both be named {short!r} in run names; rename the argument"
            )
    return Sweep(path, arg, runs)


_MODULES: dict[str, Any] = {}


def load_module(path: str) -> Any:
    """The config file at `path` as a module. The folder above its package (e.g. the repository, for
    configs/sweeps/x.py) goes on sys.path, so a sweep file can import the config it sweeps."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} does not exist")
    key = f"{path}:{os.stat(path).st_mtime_ns}:{os.stat(path).st_size}"  # an edited file is read again
    if key in _MODULES:
        return _MODULES[key]
    root = os.path.dirname(path)
    while os.path.isfile(os.path.join(root, "__init__.py")):
        root = os.path.dirname(root)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "clip_jax_sweep_config_" + hashlib.sha1(path.encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error, a failed import, ...: the file is the user's to fix
        raise UserError(f"config file {path} does not load: {type(e).__name__}: {e}") from e
    _MODULES[key] = module
    return module
