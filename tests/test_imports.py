"""The modules of ``gossip`` and ``topologies`` import each other without a cycle.

The graph is read from the source with ``ast``: every ``import``/``from ... import`` anywhere in a
module (also inside functions, which would only hide a cycle) is an edge to the module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

from graphlib import CycleError, TopologicalSorter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gossip", "topologies")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules that the module ``name`` imports (a ``from p import m`` of a submodule
    ``m`` counts as importing ``p.m``)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path): path for path in files}
    return {name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
            for name, path in modules.items()}


def test_the_graph_sees_the_imports_it_must_see() -> None:
    graph = import_graph()
    assert "gossip.registry" in graph["gossip.config"]
    assert "topologies.topology" in graph["topologies"]


def test_no_import_cycle_in_gossip_or_topologies() -> None:
    graph = import_graph()
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_a_cycle_would_be_found() -> None:
    try:
        tuple(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())
    except CycleError:
        return
    raise AssertionError("graphlib did not report a two-module cycle")
