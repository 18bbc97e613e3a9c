"""Unwind tables of real files: .eh_frame, .debug_frame, the disk cache."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from agent.unwind.rows import CFA_END, CFA_NONE, CFA_RBP, CFA_RSP
from agent.unwind.table import TableCache, TableError, load_unwind_info
from tests.conftest import PROGRAMS, compile_c


def symbol_range(path: Path, name: str) -> tuple[int, int]:
    """[start, end) of a function, as binutils' nm reports it."""
    out = subprocess.run(
        ["nm", "-S", "--defined-only", str(path)], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3] == name:
            return int(fields[0], 16), int(fields[0], 16) + int(fields[1], 16)
    if name == "_start":  # nm gives crt1's _start no size: take the symbol alone
        start = next(int(f.split()[0], 16) for f in out.splitlines() if f.endswith(" _start"))
        return start, start + 1
    raise AssertionError(f"{name} not in {path}")


def kinds_in(path: Path, name: str, cache: TableCache | None = None) -> set[int]:
    start, end = symbol_range(path, name)
    with open(path, "rb") as f:
        info = load_unwind_info(f, "cafe", cache or TableCache(None))
    rows = info.table.rows()
    before = [r for r in rows if r.address <= start][-1:]
    return {r.cfa_type for r in before + [r for r in rows if start < r.address < end]}


def test_eh_frame_of_a_program_without_frame_pointers(tmp_path: Path) -> None:
    prog = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "p", "-O2", "-fomit-frame-pointer")
    assert kinds_in(prog, "run") == {CFA_RSP}
    assert kinds_in(prog, "_start") == {CFA_END}  # the outermost frame says so itself


def test_eh_frame_of_a_program_with_frame_pointers(tmp_path: Path) -> None:
    prog = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "p", "-O2", "-fno-omit-frame-pointer")
    assert CFA_RBP in kinds_in(prog, "run")


def test_debug_frame_fills_in_what_eh_frame_lacks(tmp_path: Path) -> None:
    flags = ("-O2", "-g", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables")
    prog = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "p", *flags)
    sections = subprocess.run(["readelf", "-S", str(prog)], capture_output=True, text=True)
    assert ".debug_frame" in sections.stdout
    assert CFA_NONE not in kinds_in(prog, "run") and CFA_RSP in kinds_in(prog, "run")


def test_tables_are_cached_by_build_id(tmp_path: Path) -> None:
    prog = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "p", "-O2")
    cache = TableCache(tmp_path / "cache")
    with open(prog, "rb") as f:
        built = load_unwind_info(f, "cafe", cache)
    assert (tmp_path / "cache" / "cafe.unwind").exists()
    with open(prog, "rb") as f:
        assert load_unwind_info(f, "cafe", cache).table == built.table
    (tmp_path / "cache" / "cafe.unwind").write_bytes(b"garbage")  # rebuilt, not trusted
    with open(prog, "rb") as f:
        assert load_unwind_info(f, "cafe", cache).table == built.table
    assert built.segments and built.load_bias(0x555555554000, 0) == 0x555555554000


def test_not_an_elf_file() -> None:
    with pytest.raises(TableError):
        load_unwind_info(io.BytesIO(b"#!/bin/sh\n" * 10), "", TableCache(None))
