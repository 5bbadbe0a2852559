"""The import graph, read from the source (every ``import``, function-level ones included): no cycles, and the
layers flow one way: ``runtime`` imports nothing of ours above it; ``probes`` and ``analyses`` import only
``runtime`` (never each other); ``app`` imports ``runtime`` and ``analyses`` (never ``probes``); only the CLI and the
public API (``memento_lens/``) sit on top of everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> import package (pyproject.toml [tool.setuptools] package-dir).
PACKAGES = {
    "runtime": "memento_lens.runtime",
    "probes": "memento_lens.probes",
    "analyses": "memento_lens.analyses",
    "app": "memento_lens.app",
    "memento_lens": "memento_lens",
}
# Which layers each layer may import (besides itself).
ALLOWED = {
    "runtime": set(),
    "probes": {"runtime"},
    "analyses": {"runtime"},
    "app": {"runtime", "analyses"},
    "memento_lens": {"runtime", "probes", "analyses", "app"},
}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            mods[".".join((pkg, *rel))] = path
    return mods


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "memento_lens" else "memento_lens"


def import_graph() -> dict[str, set[str]]:
    """``{module: {modules of ours it imports}}``, from every Import/ImportFrom node (any depth)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    if node.level > 1:
                        base = base[: -(node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for cand in candidates:
                # `import a.b.c` also imports a.b: count the deepest module of ours it names.
                while cand and cand not in mods:
                    cand = cand.rpartition(".")[0]
                if cand and cand != mod and not mod.startswith(cand + "."):
                    out.add(cand)
        graph[mod] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_reader_sees_function_level_imports():
    """The scan must see an import hidden inside a function (the way cycles were hidden before)."""
    graph = import_graph()
    assert graph, "no modules found"
    hidden = [
        m
        for m, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for inner in ast.walk(node)
        if isinstance(inner, ast.ImportFrom) and inner.level
    ]
    assert hidden, "expected some function-level relative imports to exercise the scan"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_flow_one_way():
    bad = [
        f"{mod} ({_layer(mod)}) imports {dep} ({_layer(dep)})"
        for mod, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if _layer(dep) != _layer(mod) and _layer(dep) not in ALLOWED[_layer(mod)]
    ]
    assert not bad, "layer order runtime -> probes/analyses -> app -> CLI broken:\n" + "\n".join(bad)


def test_cycle_finder_on_hand_built_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
