"""The engine's data flows one way: the import graph between its parts, read from the source with ast.

Every import counts, including those inside functions (a lazy import still ties two parts together). A part is
a subpackage (model, training, inference, evaluation, io, synth) or a top-level module (geo, timecode, records,
cli, ...); `gtloc_engine` itself (its __init__: __version__, GtlocError) is a leaf that imports nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gtloc_engine"
SUBPACKAGES = ("model", "training", "inference", "evaluation", "io", "synth")
ROOT = "gtloc_engine"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the gtloc_engine modules (or packages) that the file imports, relative imports resolved."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            # `from gtloc_engine import io` imports the subpackage io, not a name of the root package.
            for alias in node.names:
                sub = PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")
                if sub.is_dir() or sub.with_suffix(".py").is_file():
                    out.add(f"{target}.{alias.name}")
    return {m for m in out if m == ROOT or m.startswith(ROOT + ".")}


def part(module: str) -> str:
    """The part a module belongs to: its subpackage or top-level module, or the root package itself."""
    return module.split(".")[1] if module != ROOT else ROOT


def part_graph() -> dict[str, dict[str, list[str]]]:
    """{importing part: {imported part: ['module -> module', ...]}}, edges within a part left out."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = module_name(path)
        for dst in sorted(imported_modules(path)):
            a, b = part(src), part(dst)
            graph.setdefault(a, {})
            if a != b:
                graph[a].setdefault(b, []).append(f"{src} -> {dst}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of parts [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def describe(graph, cycle: list[str]) -> str:
    def why(a, b):  # the first few module imports behind an edge
        lines = graph[a][b]
        return ", ".join(lines[:3]) + (f", ... ({len(lines)} in all)" if len(lines) > 3 else "")

    return "; ".join(f"{a} -> {b} ({why(a, b)})" for a, b in zip(cycle, cycle[1:]))


def test_the_walk_sees_every_subpackage_and_lazy_imports():
    graph = part_graph()
    assert set(SUBPACKAGES) <= set(graph)
    # cli imports nearly everything inside its command functions only: the walk must see those imports
    assert {"training", "inference", "evaluation", "model", "io"} <= set(graph["cli"])


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}, "c": {"a": [], "b": []}}) is None


def test_subpackages_import_each_other_without_cycles():
    graph = part_graph()
    sub = {a: {b: why for b, why in edges.items() if b in SUBPACKAGES} for a, edges in graph.items()
           if a in SUBPACKAGES}
    cycle = find_cycle(sub)
    assert cycle is None, f"import cycle between subpackages: {describe(sub, cycle)}"


def test_the_whole_engine_has_no_import_cycle_between_its_parts():
    graph = part_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(graph, cycle)}"


@pytest.mark.parametrize("importer, forbidden", [
    ("io", "inference"),  # io reads and writes files; what fills them is computed upstream
    ("io", "training"),
    ("evaluation", "training"),  # the trainer evaluates; evaluation must not need the trainer
])
def test_layer_does_not_import(importer, forbidden):
    edges = part_graph().get(importer, {})
    assert forbidden not in edges, f"{importer}/ imports {forbidden}/: {', '.join(edges[forbidden])}"
