"""The package's layers import downwards only: the library never imports the service, and persistence never
imports the API or the worker. Read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moecomp"

# layer -> the moecomp subpackages it must never import
FORBIDDEN = {
    "compression": ("moecomp.api", "moecomp.worker", "moecomp.persistence", "moecomp.cli", "moecomp.settings"),
    "persistence": ("moecomp.api", "moecomp.worker", "moecomp.cli"),
}


def imported_modules(source: str) -> set[str]:
    """Every absolute module name an ``import`` or ``from ... import`` statement of ``source`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(layer: str, root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted((root / layer).rglob("*.py")):
        for name in sorted(imported_modules(path.read_text())):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer]):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    assert violations(layer) == []


def test_a_violation_is_reported(tmp_path: Path) -> None:
    """The check itself: a library module that reaches into the service (lazily) is caught."""
    module = tmp_path / "compression" / "engine.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from moecomp.worker.runner import run_body\n    import moecomp.api.app\n")
    assert violations("compression", tmp_path) == [
        "compression/engine.py imports moecomp.api.app",
        "compression/engine.py imports moecomp.worker.runner",
        "compression/engine.py imports moecomp.worker.runner.run_body",
    ]
