"""Import direction between the layers: config/ below everything, api/ beside runners/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("api", "bench", "chaos", "config", "io_connectors", "pipelines", "runners", "schemas",
        "schema_registry", "transforms")


def _imports(package: str) -> dict[str, set[str]]:
    """``{file: top-level packages of ours it imports}`` for every module of ``package``."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(OURS)
    return found


@pytest.mark.parametrize("package,forbidden", [
    ("config", set(OURS) - {"config"}),     # the lowest layer: imports nothing of ours
    ("api", {"runners", "bench", "chaos"}),  # HTTP sits beside the entry points, not above
])
def test_layer_imports_nothing_above_it(package: str, forbidden: set[str]) -> None:
    wrong = {f: sorted(names & forbidden) for f, names in _imports(package).items()
             if names & forbidden}
    assert wrong == {}


def _module_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: modules of ours it imports}``, function-level (lazy) imports included: a
    lazy import hides a cycle from Python, not from a reader."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module in modules:
                    deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names
                            if f"{node.module}.{alias.name}" in modules)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Known, not fixed yet: cycles inside api/ (api <-> api.console: the console's factory builds
# the API app) and inside runners/ (runners.stack's service modules <-> its supervisor and
# cluster). Any other cycle, across packages included, fails.
_KNOWN_CYCLE_PACKAGES = ("api", "runners")


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_module_graph(OURS))
    new = [c for c in cycles
           if not any(all(m.split(".")[0] == p for m in c) for p in _KNOWN_CYCLE_PACKAGES)]
    assert new == []


def test_the_cycle_finder_sees_a_lazy_import_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
