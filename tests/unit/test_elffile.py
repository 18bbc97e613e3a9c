"""The struct ELF reader (symbolizer/elffile.py), checked against binutils.

Symbols against `nm`, segments and dynamic entries against `readelf`, code
bytes against the file's own bytes at the offset readelf gives; malformed
headers, table-driven, must raise ElfError and nothing else.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from symbolizer.budget import Budget, BudgetExceeded, ElfError
from symbolizer.elffile import EM_X86_64, PT_LOAD, ElfFile, Segment
from tests.conftest import compile_c

SOURCE = """
int helper(int x) { return x * 7; }
int target(int x) { return helper(x) + 1; }
int main(int argc, char **argv) { (void)argv; return target(argc); }
"""


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A position-dependent executable (vaddr != offset) with a DT_RUNPATH."""
    out = tmp_path_factory.mktemp("elffile")
    src = out / "p.c"
    src.write_text(SOURCE)
    flags = (
        "-O1",
        "-no-pie",
        "-Wl,--enable-new-dtags,-rpath,/opt/a:$ORIGIN/lib",
        "-Wl,--no-as-needed",
        "-lm",
    )
    return compile_c(src, out / "p", *flags)


def elf_of(path: Path) -> ElfFile:
    return ElfFile(io.BytesIO(path.read_bytes()))


def test_functions_agree_with_nm(program: Path) -> None:
    nm = run("nm", "--defined-only", str(program))
    expected = {
        ln.split()[2]: int(ln.split()[0], 16)
        for ln in nm.splitlines()
        if ln.split()[1] in "Tt" and int(ln.split()[0], 16)
    }
    ours = {s.name: s.address for s in elf_of(program).functions() if s.table == ".symtab"}
    assert ours == expected
    only = list(elf_of(program).functions({"target"}))
    assert [(s.name, s.address, s.ifunc) for s in only] == [("target", expected["target"], False)]
    assert only[0].size > 0


def test_segments_and_code_agree_with_readelf(program: Path) -> None:
    heads = run("readelf", "-lW", str(program))
    loads = [ln.split() for ln in heads.splitlines() if ln.strip().startswith("LOAD")]
    expected = tuple(Segment(int(f[1], 16), int(f[2], 16), int(f[4], 16)) for f in loads)
    elf = elf_of(program)
    assert elf.segments() == expected and elf.machine == EM_X86_64
    assert elf.elfclass == 64 and elf.little
    target = next(s for s in elf.functions({"target"}))
    seg = next(s for s in expected if s.vaddr <= target.address < s.vaddr + s.filesz)
    at = target.address - seg.vaddr + seg.offset
    assert elf.code_at(target.address, 16) == program.read_bytes()[at : at + 16]
    assert elf.code_at(expected[0].vaddr) == b""  # not an executable segment
    assert elf.code_at(0x10) == b""  # in no segment at all


def test_dynamic_entries_agree_with_readelf(program: Path) -> None:
    dyn = run("readelf", "-dW", str(program))
    needed = [ln.split("[", 1)[1].rstrip("]") for ln in dyn.splitlines() if "(NEEDED)" in ln]
    got = elf_of(program).dynamic()
    assert list(got.needed) == needed and "libm.so.6" in needed
    assert got.runpath == ("/opt/a", "$ORIGIN/lib") and got.rpath == ()


def test_an_object_without_dynamic_section_has_no_dynamic_entries(tmp_path: Path) -> None:
    src = tmp_path / "o.c"
    src.write_text(SOURCE)
    obj = compile_c(src, tmp_path / "o.o", "-c")
    elf = elf_of(obj)
    assert elf.dynamic().needed == () and elf.segments() == ()
    names = {s.name for s in elf.functions()}
    assert "target" in names and "helper" not in names  # value 0: no place to probe


@pytest.mark.skipif(shutil.which("ld") is None, reason="needs binutils' ld")
def test_an_elf32_file_is_read_with_its_own_layout(tmp_path: Path) -> None:
    asm = tmp_path / "t.s"
    asm.write_text(
        ".globl _start\n.globl f\n.text\nf: ret\n.type f,@function\n.size f,1\n"
        "_start: call f\n hlt\n.type _start,@function\n"
    )
    obj, exe = tmp_path / "t.o", tmp_path / "t"
    try:
        subprocess.run(["as", "--32", "-o", str(obj), str(asm)], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "-o", str(exe), str(obj)], check=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no 32-bit binutils: {exc}")
    elf = elf_of(exe)
    assert elf.elfclass == 32 and elf.machine == 3  # EM_386
    f = next(elf.functions({"f"}))
    assert (f.size, elf.code_at(f.address, 1)) == (1, b"\xc3")
    assert all(p.type == PT_LOAD for p in elf.program_headers)


def test_extended_section_numbering_is_followed(program: Path) -> None:
    """e_shnum 0 and e_shstrndx SHN_XINDEX: the counts are in section 0."""
    data = bytearray(program.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    struct.pack_into("<HH", data, 0x3C, 0, 0xFFFF)
    struct.pack_into("<Q", data, shoff + 0x20, shnum)  # sh_size of section 0
    struct.pack_into("<I", data, shoff + 0x28, shstrndx)  # sh_link of section 0
    extended = ElfFile(io.BytesIO(bytes(data)))
    assert [s.name for s in extended.sections] == [s.name for s in elf_of(program).sections]


def patched(base: bytes, offset: int, fmt: str, *values: int) -> bytes:
    data = bytearray(base)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("empty", lambda b: b""),
        ("not ELF", lambda b: b"#!/bin/sh\n" * 10),
        ("bad class", lambda b: patched(b, 4, "<B", 7)),
        ("truncated header", lambda b: b[:40]),
        ("phentsize lies", lambda b: patched(b, 0x36, "<H", 12)),
        ("phnum huge", lambda b: patched(b, 0x38, "<H", 0xFFFE)),
        ("phoff past the end", lambda b: patched(b, 0x20, "<Q", 1 << 40)),
        ("shoff past the end", lambda b: patched(b, 0x28, "<Q", 1 << 40)),
        ("shentsize lies", lambda b: patched(b, 0x3A, "<H", 3)),
    ],
)
def test_malformed_headers_raise_elf_error(program: Path, name: str, make: object) -> None:
    assert callable(make)
    with pytest.raises(ElfError):
        ElfFile(io.BytesIO(make(program.read_bytes())))


def test_a_symbol_table_linked_to_no_section_is_an_elf_error(program: Path) -> None:
    elf = elf_of(program)
    sec = elf.section(".symtab")
    assert sec is not None
    shoff = struct.unpack_from("<Q", program.read_bytes(), 0x28)[0]
    bad = patched(program.read_bytes(), shoff + sec.index * 64 + 0x28, "<I", 9999)
    with pytest.raises(ElfError, match="string table"):
        list(ElfFile(io.BytesIO(bad)).functions())


def test_reads_are_paid_for_by_the_budget(program: Path) -> None:
    with pytest.raises(BudgetExceeded):
        list(ElfFile(io.BytesIO(program.read_bytes()), Budget(max_bytes=4096)).functions())
    with pytest.raises(BudgetExceeded):
        ElfFile(io.BytesIO(program.read_bytes()), Budget(max_bytes=100))


def test_sections_with_contents_and_their_alignment_agree_with_readelf(program: Path) -> None:
    """with_contents() leaves out SHT_NOBITS (.bss: no bytes in the file);
    each section's sh_addralign is readelf's `Al` column."""
    row = re.compile(r"^\s*\[\s*([1-9]\d*)\]\s+(\S+)\s+(\S+)\s.*\s(\d+)$", re.M)
    rows = row.findall(run("readelf", "-SW", str(program)))
    assert len(rows) > 10 and "NOBITS" in {kind for _, _, kind, _ in rows}
    elf = elf_of(program)
    for index, name, kind, align in rows:
        sec = elf.sections[int(index)]
        assert (sec.name, sec.align) == (name, int(align))
        assert (name in elf.with_contents()) == (kind != "NOBITS"), name
    text = elf.section(".text")
    assert text is not None and elf.with_contents()[".text"] == text.header
