"""The CFI interpreter against binutils' own: `readelf --debug-dump=frames-interp`
prints the rule table of every FDE; ours must print the same for the CFA,
RBP and the return address, on real binaries (Debian's libc, python3, and a
program built here with and without frame pointers)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent.unwind.cfa import (
    EXPRESSION,
    OFFSET,
    REGISTER,
    SAME,
    UNDEFINED,
    VAL_EXPRESSION,
    VAL_OFFSET,
    CfiRow,
    Rule,
    interpret,
)
from agent.unwind.ehframe import Fde, parse_section
from tests.conftest import PROGRAMS, compile_c

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")

NAMES = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp"] + [f"r{n}" for n in range(8, 16)]
Table = list[tuple[int, str, str, str]]


def render_rule(rule: Rule | None) -> str:
    if rule is None or rule.kind == UNDEFINED:
        return "u"
    return {
        SAME: lambda r: "s",
        OFFSET: lambda r: f"c{r.value:+d}",
        VAL_OFFSET: lambda r: f"v{r.value:+d}",
        REGISTER: lambda r: f"r{r.value}",
        EXPRESSION: lambda r: "exp",
        VAL_EXPRESSION: lambda r: "vexp",
    }[rule.kind](rule)


def render(row: CfiRow) -> tuple[int, str, str, str]:
    cfa = "exp" if row.cfa.expression else f"{NAMES[row.cfa.register]}+{row.cfa.offset}"
    return (row.address, cfa, render_rule(row.registers.get(6)), render_rule(row.registers.get(16)))


def dedupe(rows: Table) -> Table:
    out: Table = []
    for row in rows:
        if not out or out[-1][1:] != row[1:]:
            out.append(row)
    return out


def readelf_tables(path: Path) -> dict[int, Table]:
    """FDE start -> its rows (CFA, rbp, ra) as readelf interprets them."""
    # readelf exits 1 on stripped binaries (it warns that .debug_info is
    # missing) but still prints every frame table.
    text = subprocess.run(
        ["readelf", "--debug-dump=frames-interp", str(path)], capture_output=True, text=True
    ).stdout
    tables: dict[int, Table] = {}
    rows: Table = []
    columns: list[str] = []
    for line in text.splitlines():
        fde = re.search(r" FDE cie=\w+ pc=([0-9a-f]+)\.\.", line)
        if fde:
            rows = tables.setdefault(int(fde.group(1), 16), [])
        elif line.startswith("Contents of the .debug_frame"):
            break  # .eh_frame only: the same addresses may be described twice
        elif line.strip().startswith("LOC"):
            columns = line.split()[1:]
        elif " CIE" in line:
            rows = []  # the CIE's own table is not an FDE's
        elif re.match(r"[0-9a-f]{16} ", line):
            # a register rule prints as "r8 (r8)": keep the DWARF number
            line = re.sub(r" \((\w+)\)", "", line)
            values = dict(zip(columns, line.split()[1:], strict=True))
            rows.append(
                (
                    int(line.split()[0], 16),
                    values["CFA"],
                    values.get("rbp", "u"),
                    values.get("ra", "u"),
                )
            )
    return tables


def fdes_of(path: Path) -> list[Fde]:
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".eh_frame")
        return parse_section(section.data(), section["sh_addr"], is_eh_frame=True)


def compare(path: Path) -> int:
    """Compare every FDE readelf shows a table for; return how many were."""
    expected = readelf_tables(path)
    fdes = {f.pc_begin: f for f in fdes_of(path)}
    compared = 0
    for start, rows in expected.items():
        if not rows:
            continue  # readelf prints no table for an FDE without instructions
        ours = dedupe([render(r) for r in interpret(fdes[start], (6, 16))])
        assert ours == dedupe(rows), f"FDE at 0x{start:x} of {path}"
        compared += 1
    assert set(fdes) >= set(expected)
    return compared


def test_libc_matches_readelf() -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        pytest.skip("no Debian libc at the usual path")
    assert compare(libc) > 2000


def test_python3_matches_readelf() -> None:
    python = Path("/usr/bin/python3").resolve()
    assert compare(python) > 5000


@pytest.mark.parametrize("flags", [("-fomit-frame-pointer",), ("-fno-omit-frame-pointer",)])
def test_a_program_built_here_matches_readelf(tmp_path: Path, flags: tuple[str, ...]) -> None:
    program = compile_c(PROGRAMS / "hotsplit.c", tmp_path / "hotsplit", "-O2", *flags)
    assert compare(program) >= 2  # leaf functions that push nothing have no table
