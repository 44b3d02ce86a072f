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
