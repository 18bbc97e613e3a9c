"""The layout of the code is its design: each stage imports only what is
below it, and a test keeps it so.

symbolizer/ is the lowest layer: it never imports the agent. In agent/, the
top-level modules are the vocabulary every stage shares (errors, model,
config, safewrite, untrusted) and import no stage; cli.py and registry.py are
the two hubs and may import anything. Each stage folder may import itself,
the vocabulary and the folders listed for it below, nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
AGENT = ROOT / "agent"
VOCABULARY = {"errors", "model", "config", "safewrite", "untrusted"}
HUBS = {"cli", "registry"}

# folder -> what else it may import
ALLOWED: dict[str, set[str]] = {
    "unwind": set(),  # CFI tables in user space: pure data work
    "kernel": {"unwind"},  # bpf(2), BCC, the loader child, the C mirrors
    "sources": {"kernel", "unwind"},  # one module per profile type
    "pipeline": {"sources.base"},  # aggregate, resolve, build: no BPF, no daemon
    "exporters": set(),  # pure encoders of a Profile
    "record": {"kernel", "sources", "pipeline", "exporters", "registry"},
    "daemon": {"kernel", "sources", "pipeline", "exporters", "registry"},
    "tools": {"kernel", "exporters"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "agent":  # from agent import model, registry
                names.update(f"agent.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def stage_of(module: str) -> str:
    """`agent.sources.base` -> "sources"; a top-level module -> its name."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def allowed(folder: str, module: str) -> bool:
    stage = stage_of(module)
    if stage in VOCABULARY or stage == folder:
        return True
    rules = ALLOWED[folder]
    return stage in rules or any(module == f"agent.{r}" for r in rules)


def offenders(folder: str) -> set[str]:
    return {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (AGENT / folder).rglob("*.py")
        for name in imported_modules(path)
        if name.startswith("agent.") and not allowed(folder, name)
    }


def test_every_folder_has_a_rule() -> None:
    folders = {p.name for p in AGENT.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_stage_imports_only_what_is_below_it(folder: str) -> None:
    assert not offenders(folder)


def test_vocabulary_imports_no_stage() -> None:
    bad = {
        f"{name}.py: {module}"
        for name in VOCABULARY
        for module in imported_modules(AGENT / f"{name}.py")
        if module.startswith("agent.")
        and stage_of(module) not in VOCABULARY
        # config checks a type's settings against the registry, lazily
        and not (name == "config" and module == "agent.registry")
    }
    assert not bad


def test_only_kernel_touches_bpf() -> None:
    """BCC and raw system calls stay in kernel/: everything else goes through it."""
    bad = {
        str(path.relative_to(ROOT))
        for path in AGENT.rglob("*.py")
        if path.parent.name != "kernel"
        and ("bcc" in imported_modules(path) or ".syscall(" in path.read_text())
    }
    assert not bad


def test_symbolizer_does_not_import_agent() -> None:
    bad = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "symbolizer").rglob("*.py")
        for name in imported_modules(path)
        if name == "agent" or name.startswith("agent.")
    }
    assert not bad


def test_the_check_sees_imports(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text(
        "import agent.x\nfrom agent.safewrite import write_atomic\nfrom . import y\n"
        "from agent import registry\n"
    )
    assert imported_modules(p) == {"agent.x", "agent.safewrite", "agent.registry"}


def test_the_rules_catch_an_upward_import() -> None:
    assert not allowed("pipeline", "agent.kernel.bpfsys")
    assert not allowed("exporters", "agent.daemon.runner")
    assert allowed("pipeline", "agent.sources.base")
    assert not allowed("pipeline", "agent.sources.cpu")
    assert allowed("record", "agent.registry")
