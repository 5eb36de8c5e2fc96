"""Setting any config field by its dotted path: the one mechanism behind `--set` / `--drop` on the
trainer's command line and every run of a sweep.

ml_collections' own `--config.x=y` parses scalars and tuples only; here a value may be any Python literal
(lists, dicts, None), a section may be replaced whole, a new entry added to an open section
(`evals.probe={...}`), and entries removed with DROP (`evals.shape`, or `evals.*` for all of them).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections


class _Drop:
    """The value that removes a config entry (`add(**{"evals.shape": DROP})`, `--drop evals.shape`)."""

    def __repr__(self) -> str:
        return "DROP"

    def __reduce__(self) -> str:
        return "DROP"  # unpickles as this module's singleton


DROP = _Drop()

# Fields whose value may be either a name or a section (a model by name, or inline as a dict).
_NAME_OR_SECTION = ("model",)


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `config` with each `path: value` applied in order; ValueError naming a bad path or type.

    Numbers widen to a float field and lists/tuples take the field's own sequence type; a dict replaces a
    section; any other change of type is an error, so a typo'd value never trains silently.
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        for path, value in overrides.items():
            _apply_one(config, path, value)
    return config


def _apply_one(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    *parents, key = path.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"override {path}: config.{'.'.join(parents[: i + 1])} does not exist")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"override {path}: config.{'.'.join(parents)} is not a section")
    if value is DROP:
        if key == "*":
            for name in list(node.keys()):
                del node[name]
        elif key in node:
            del node[key]
        else:
            raise ValueError(f"override {path}: nothing to drop, config.{path} does not exist")
        return
    if key in node:
        value = _coerce(path, node.get_type(key), value)
    elif isinstance(value, dict):
        value = ml_collections.ConfigDict(value)
    with node.ignore_type():
        node[key] = value


def _coerce(path: str, field_type: type, new: Any) -> Any:
    name = path.rsplit(".", 1)[-1]
    if new is None or field_type is type(None):
        return ml_collections.ConfigDict(new) if isinstance(new, dict) else new
    if issubclass(field_type, ml_collections.ConfigDict):
        if isinstance(new, (dict, ml_collections.ConfigDict)):
            return ml_collections.ConfigDict(new)
        if isinstance(new, str) and name in _NAME_OR_SECTION:
            return new
    elif field_type is float and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    elif field_type in (tuple, list) and isinstance(new, (tuple, list)):
        return field_type(new)
    elif (
        field_type is str and isinstance(new, (dict, ml_collections.ConfigDict)) and name in _NAME_OR_SECTION
    ):
        return ml_collections.ConfigDict(new)
    if isinstance(new, field_type) and isinstance(new, bool) == (field_type is bool):
        return new
    raise ValueError(
        f"override {path}={new!r}: config.{path} has type {field_type.__name__}, not {type(new).__name__}"
    )


def parse_value(text: str, current: Any = None) -> Any:
    """A command-line value: a Python literal (numbers, tuples, lists, dicts, None, quoted strings), or
    the text itself; `true`/`false` are booleans. A string field keeps unquoted text verbatim."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(current, str) and not isinstance(value, (str, dict)):
        return text
    return value


def cli_overrides(
    config: ml_collections.ConfigDict, sets: Iterable[str], drops: Iterable[str]
) -> dict[str, Any]:
    """`--drop PATH` and `--set PATH=VALUE` flags as one ordered override dict (drops first)."""
    out: dict[str, Any] = {path: DROP for path in drops}
    for item in sets:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        out[path.strip()] = parse_value(text, _current(config, path.strip()))
    return out


def _current(config: ml_collections.ConfigDict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def format_value(value: Any) -> str:
    """The command-line text that parse_value reads back as `value`."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, str) and parse_value(value) == value:
        return value  # unquoted where that reads back the same
    return repr(value)
