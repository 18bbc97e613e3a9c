"""The symbolizer is the lower layer: it never imports the agent."""

from __future__ import annotations

import ast
from pathlib import Path

SYMBOLIZER = Path(__file__).parents[2] / "symbolizer"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_symbolizer_does_not_import_agent() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in SYMBOLIZER.glob("*.py")
        for name in imported_modules(path)
        if name == "agent" or name.startswith("agent.")
    }
    assert not offenders


def test_the_check_sees_imports(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("import agent.x\nfrom agent.safewrite import write_atomic\nfrom . import y\n")
    assert imported_modules(p) == {"agent.x", "agent.safewrite"}
