"""Shared fixtures: compiling ground-truth programs, tiers by privilege."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).parent / "programs"
REPO = Path(__file__).parent.parent


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """BPF and end-to-end tests need root; a laptop without it skips them, saying why."""
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root to load BPF programs (CI runs as root)")
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(skip)


def compile_c(source: Path, out: Path, *flags: str) -> Path:
    """Build a test program with gcc; the test fails loudly if it cannot."""
    cmd = ["gcc", *flags, "-o", str(out), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def hotsplit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 75/25 ground-truth program, built with frame pointers."""
    out = tmp_path_factory.mktemp("programs") / "hotsplit"
    return compile_c(PROGRAMS / "hotsplit.c", out, "-O1", "-g", "-fno-omit-frame-pointer")


@pytest.fixture(scope="session")
def unwind_prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """programs/unwind.c without frame pointers (-O2 -fomit-frame-pointer, CFI
    in .eh_frame as gcc emits by default), linked with unwind_fp.c, which has
    frame pointers and no CFI at all; beside it libunwind_test.so, which its
    dlopen mode loads."""
    out = tmp_path_factory.mktemp("unwind")
    main_o, fp_o, exe = out / "unwind.o", out / "unwind_fp.o", out / "unwind"
    compile_c(PROGRAMS / "unwind.c", main_o, "-c", "-O2", "-fomit-frame-pointer")
    no_cfi = ("-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
    compile_c(PROGRAMS / "unwind_fp.c", fp_o, "-c", "-O2", *no_cfi)
    subprocess.run(["gcc", "-o", str(exe), str(main_o), str(fp_o), "-lpthread", "-ldl"], check=True)
    compile_c(PROGRAMS / "unwind_lib.c", out / "libunwind_test.so", "-O2", "-shared", "-fPIC")
    return exe


@pytest.fixture(scope="session")
def bpfprof_cmd() -> list[str]:
    """How to run the installed command (the venv's entry point)."""
    exe = shutil.which("bpfprof") or str(REPO / ".venv" / "bin" / "bpfprof")
    return [exe]


from tests.pyroots import RootFactory, root_for  # noqa: E402  (the fixture below only)


@pytest.fixture(scope="session")
def python_root() -> RootFactory:
    """root_for: the chroot of a Debian CPython ("3.13", "3.14"), built on
    first use and cached (tests/pyroots.py). Skipped only without root, which
    chroot needs: on CI (root) a failed build is an error, never a skip."""
    if not is_root():
        pytest.skip("needs root to chroot into the Debian Python roots (CI runs as root)")
    return root_for
