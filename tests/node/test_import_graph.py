"""Our modules import each other without cycles, and the layers point one way.

Read from the source with :mod:`ast`, not by importing: every ``import`` counts,
including those under ``if TYPE_CHECKING:`` and inside functions (a cycle hidden there
is still a cycle: mypy, a refactoring or a later import at the top brings it back).
tests/test_layering.py checks what importing actually loads.

The model, module by module:

* ``import a.b.c`` depends on ``a.b.c``.
* ``from a.b import c`` depends on the module ``a.b.c`` if there is one, and on ``a.b``
  (its ``__init__``) if ``c`` is a name defined there.
* The implicit import of a module's parent packages is not an edge: ``node/__init__``
  importing ``node._relay`` is how a package exports what its modules define, and does
  not make ``node._relay`` depend on ``node._node``. An explicit ``from node import X``
  in ``node/_relay.py`` is an edge to ``node`` (and a cycle, since ``node`` imports
  ``node._relay``).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("crypto", "mesh", "node", "simulations")

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def module_paths() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that the module at ``path`` imports, anywhere in it."""
    name = module_name(path)
    # The package a relative import is relative to.
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(name, path.read_text(encoding="utf-8"), package=package, modules=modules)


def imports_in(name: str, source: str, *, package: str, modules: set[str]) -> set[str]:
    """The modules of ours (``modules``) that module ``name`` (``source``) imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                assert node.module is not None
                base = node.module
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    ours = {imported for imported in found if is_ours(imported)}
    unknown = ours - modules
    assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    ours.discard(name)  # (``from node import _x`` in node/__init__ is not a self-import)
    return ours


@functools.cache
def import_graph() -> Graph:
    paths = list(module_paths())
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(vertex: str) -> None:
        index[vertex] = low[vertex] = len(index)
        stack.append(vertex)
        on_stack.add(vertex)
        for successor in sorted(graph[vertex]):
            if successor not in index:
                visit(successor)
                low[vertex] = min(low[vertex], low[successor])
            elif successor in on_stack:
                low[vertex] = min(low[vertex], index[successor])
        if low[vertex] == index[vertex]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == vertex:
                    break
            if len(component) > 1 or vertex in graph[vertex]:
                components.append(component)

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return [shortest_cycle(graph, component) for component in components]


def shortest_cycle(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle within ``component``, as ``[a, b, ..., a]`` (breadth first)."""
    best: list[str] | None = None
    for start in sorted(component):
        previous: dict[str, str | None] = {start: None}
        frontier = [start]
        found: list[str] | None = None
        while frontier and found is None:
            following = []
            for vertex in frontier:
                for successor in sorted(graph[vertex] & component):
                    if successor == start:
                        path = [vertex]
                        while (before := previous[path[-1]]) is not None:
                            path.append(before)
                        found = [*reversed(path), start]
                        break
                    if successor not in previous:
                        previous[successor] = vertex
                        following.append(successor)
                if found is not None:
                    break
            frontier = following
        if found is not None and (best is None or len(found) < len(best)):
            best = found
    assert best is not None
    return best


def describe(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in found)


# -- the graph model itself ------------------------------------------------------------


EVERY_KIND = """
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import crypto
from node import _fabric, NodeError
from node._server import Request
from . import _wrap
from ._datadir import DataDir

if TYPE_CHECKING:
    from node._node import Node


def later() -> None:
    import mesh._wire
"""


def test_the_graph_sees_every_kind_of_import() -> None:
    modules = {module_name(path) for path in module_paths()}
    found = imports_in("node._example", EVERY_KIND, package="node", modules=modules)
    assert found == {
        "crypto",
        "node._fabric",  # ``from node import _fabric``: the module
        "node",  # ``from node import NodeError``: the package's __init__
        "node._server",
        "node._wrap",
        "node._datadir",
        "node._node",  # under TYPE_CHECKING
        "mesh._wire",  # in a function
    }
    with pytest.raises(AssertionError, match=r"do not exist: \['node._nothing'\]"):
        imports_in("node._example", "import node._nothing", package="node", modules=modules)
    # The implicit import of the parent package is not an edge.
    assert "crypto" not in import_graph()["crypto._frames"]


def test_cycles_are_found_and_shown() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert describe([["a", "b", "a"]]) == "import cycles:\n  a -> b -> a"


# -- the rules -------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    print(describe(found) if found else "no import cycles")
    assert not found, describe(found)


@pytest.mark.parametrize("module", ["node._relay", "node._attach"])
def test_relay_and_attach_are_on_no_cycle(module: str) -> None:
    graph = import_graph()
    found = [cycle for cycle in cycles(graph) if module in cycle]
    assert not found, describe(found)
    # They know their host by a Protocol, not as a Node.
    assert "node._node" not in graph[module]
    assert "node" not in graph[module]


def test_crypto_imports_nothing_of_ours() -> None:
    graph = import_graph()
    wrong = {
        module: sorted(imported for imported in imports if not imported.startswith("crypto"))
        for module, imports in graph.items()
        if module.split(".")[0] == "crypto"
    }
    assert {module: imports for module, imports in wrong.items() if imports} == {}


def test_mesh_imports_only_crypto() -> None:
    graph = import_graph()
    wrong = {
        module: sorted(
            imported for imported in imports if imported.split(".")[0] not in ("crypto", "mesh")
        )
        for module, imports in graph.items()
        if module.split(".")[0] == "mesh"
    }
    assert {module: imports for module, imports in wrong.items() if imports} == {}


def test_node_does_not_import_simulations() -> None:
    graph = import_graph()
    wrong = {
        module: sorted(imported for imported in imports if imported.startswith("simulations"))
        for module, imports in graph.items()
        if module.split(".")[0] == "node"
    }
    assert {module: imports for module, imports in wrong.items() if imports} == {}
