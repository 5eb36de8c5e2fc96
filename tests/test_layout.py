"""The package's shape: no import circle, and evaluators that depend on models, data and weights only.

Imports are read from the source (module level and inside functions alike, since a lazy import is still
a dependency): `from pkg import sub` counts as importing the submodule `pkg.sub` when there is one, else
as importing `pkg` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "clip_jax"
EVALUATORS = ("zeroshot", "robustness", "linear_probe", "retrieval", "contrastive")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        deps.add(sub)
                    elif base in modules:
                        deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_reader_finds_a_planted_cycle():
    graph = import_graph()
    assert "clip_jax.eval.common" in graph["clip_jax.eval.zeroshot"]  # the reader sees real imports
    planted = {k: set(v) for k, v in graph.items()}
    planted["clip_jax.models.config"].add("clip_jax.eval.zeroshot")
    cycle = find_cycle(planted)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", EVALUATORS)
def test_evaluators_need_neither_each_other_nor_the_trainer(name):
    graph = import_graph()
    deps = reachable(graph, f"clip_jax.eval.{name}")
    others = {f"clip_jax.eval.{o}" for o in EVALUATORS if o != name}
    assert not deps & others, f"clip_jax.eval.{name} reaches {sorted(deps & others)}"
    trainer = sorted(d for d in deps if d.startswith("clip_jax.train"))
    assert not trainer, f"clip_jax.eval.{name} reaches the trainer: {trainer}"
