"""ELF symbol tables: the lookup rules on inline records, build-ID notes,
load segments, differential checks against llvm-symbolizer and addr2line
on binaries built here, and corrupt input."""

from __future__ import annotations

import os
import random
import shutil
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest

from symbolizer.elf import (
    ElfError,
    ElfSymbols,
    Segment,
    build_id_from_notes,
    load_elf,
    open_elf,
    read_build_id,
)
from symbolizer.symtab import Candidate, Symbol, SymbolIndex
from tests.programs import symtest
from tests.programs.symtest import Programs

needs_gcc = pytest.mark.skipif(not symtest.have_gcc(), reason="gcc is not installed")
needs_llvm = pytest.mark.skipif(
    shutil.which("llvm-symbolizer") is None, reason="llvm-symbolizer is not installed"
)
needs_addr2line = pytest.mark.skipif(
    shutil.which("addr2line") is None, reason="addr2line is not installed"
)


def cand(start: int, size: int, name: str, limit: int = 0, rank: int = 0) -> Candidate:
    """A symbol record; `limit` defaults to start+size (the section end for size 0)."""
    return Candidate(start, size, name, limit or start + size, (False, size > 0, 0, rank))


# GIVEN these symbols (a text section 0x1000-0x2000)
INDEX = [
    cand(0x1000, 0x20, "first"),
    cand(0x1040, 0, "asm_nosize", limit=0x2000),
    cand(0x1080, 0x80, "outer"),
    cand(0x1090, 0x10, "nested"),
    cand(0x10A8, 0, "label_in_outer", limit=0x2000),
    cand(0x1200, 0x10, "alias_local", rank=0),
    cand(0x1200, 0x10, "alias_global", rank=2),
    cand(0x1300, 0, "tail_nosize", limit=0x1400),
]
LOOKUPS = {
    "before everything": (0xFFF, None),
    "start": (0x1000, Symbol("first", 0x1000, 0x20)),
    "last byte": (0x101F, Symbol("first", 0x1000, 0x20)),
    "gap after a sized symbol": (0x1020, None),
    "zero-size: nearest preceding": (0x1050, Symbol("asm_nosize", 0x1040, 0)),
    "nested sized symbol": (0x1095, Symbol("nested", 0x1090, 0x10)),
    "past nested, still in outer": (0x10A0, Symbol("outer", 0x1080, 0x80)),
    "zero-size inside a sized one: the sized one": (0x10B0, Symbol("outer", 0x1080, 0x80)),
    "aliases: best rank": (0x1208, Symbol("alias_global", 0x1200, 0x10)),
    "zero-size up to its section end": (0x13FF, Symbol("tail_nosize", 0x1300, 0)),
    "zero-size past its section end": (0x1400, None),
}


@pytest.mark.parametrize("vaddr,expected", LOOKUPS.values(), ids=LOOKUPS.keys())
def test_symbol_index_rules(vaddr: int, expected: Symbol | None) -> None:
    assert SymbolIndex(INDEX).lookup(vaddr) == expected


SEGMENTS = [Segment(0, 0, 0x6F8), Segment(0x1000, 0x1000, 0x2D5), Segment(0x2DE8, 0x3DE8, 0x250)]
OFFSETS = {
    "first byte of the file": (0, 0),
    "text, vaddr == offset": (0x1100, 0x1100),
    "data: vaddr = off - p_offset + p_vaddr": (0x2DF0, 0x3DF0),
    "page slack after a segment's file bytes": (0x12D5, None),
    "past every segment": (0x10000, None),
}


@pytest.mark.parametrize("offset,vaddr", OFFSETS.values(), ids=OFFSETS.keys())
def test_file_offset_to_vaddr(offset: int, vaddr: int | None) -> None:
    assert ElfSymbols("", SEGMENTS, []).file_offset_to_vaddr(offset) == vaddr


def note(name: bytes, ntype: int, desc: bytes, align: int = 4) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % align)

    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


NOTES = {
    "build id": (note(b"GNU\0", 3, bytes.fromhex("deadbeef")), 4, "deadbeef"),
    "after an ABI tag": (
        note(b"GNU\0", 1, b"\0" * 16) + note(b"GNU\0", 3, b"\x01\x02"),
        4,
        "0102",
    ),
    "8-aligned": (note(b"GNU\0", 5, b"\0" * 12, 8) + note(b"GNU\0", 3, b"\xab", 8), 8, "ab"),
    "other owner": (note(b"Go\0", 3, b"\x01"), 4, ""),
    "truncated": (note(b"GNU\0", 3, b"\x01\x02\x03\x04")[:14], 4, ""),
    "empty": (b"", 4, ""),
}


@pytest.mark.parametrize("data,align,expected", NOTES.values(), ids=NOTES.keys())
def test_build_id_from_notes(data: bytes, align: int, expected: str) -> None:
    assert build_id_from_notes(data, True, align) == expected


# -- differential tests on binaries built here ---------------------------------


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    if not symtest.have_gcc():
        pytest.skip("gcc is not installed")
    return symtest.build(tmp_path_factory.mktemp("symtest"))


BINARIES = ["pie", "nopie", "lib"]


@needs_gcc
@needs_llvm
@pytest.mark.parametrize("which", BINARIES)
def test_names_equal_llvm_symbolizer(programs: Programs, which: str, tmp_path: Path) -> None:
    path = getattr(programs, which)
    probes = symtest.probe_addresses(symtest.function_symbols(path))
    table = load_elf(path)
    ours = [_name(table, a) for a in probes]
    theirs = symtest.llvm_symbolizer_names(path, probes, tmp_path)
    assert len(probes) > 30
    assert list(zip(map(hex, probes), ours, strict=True)) == list(
        zip(map(hex, probes), theirs, strict=True)
    )


@needs_gcc
@needs_addr2line
@pytest.mark.parametrize("which", BINARIES)
def test_same_functions_as_addr2line_inside_functions(programs: Programs, which: str) -> None:
    """addr2line names a different alias (picked_resolver for the ifunc
    picked) and extends a symbol past its size, so compare the function
    (its start address) at addresses inside sized functions."""
    path = getattr(programs, which)
    functions = symtest.function_symbols(path)
    starts = _starts_by_name(functions)
    inside = sorted({a for s, z, _ in functions if z for a in (s, s + z // 2, s + z - 1)})
    table = load_elf(path)
    theirs = symtest.addr2line_names(path, inside)
    for address, name in zip(inside, theirs, strict=True):
        found = table.lookup(address)
        assert found is not None and found.start in starts[name], (hex(address), name, found)


def _libc_path() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if "/libc.so" in path or "/libc-" in path:
                return path
    return ""


@needs_llvm
@pytest.mark.skipif(not _libc_path(), reason="this Python does not map a libc")
def test_libc_functions_equal_llvm_symbolizer_up_to_aliases(tmp_path: Path) -> None:
    """libc has many aliases at one address (__duplocale, duplocale);
    llvm-symbolizer names the last in table order, we the plainest name:
    both must denote the same function start."""
    path = _libc_path()
    functions = symtest.function_symbols(path)
    probes = symtest.probe_addresses(functions)
    table = load_elf(path)
    theirs = symtest.llvm_symbolizer_names(path, probes, tmp_path)
    starts = _starts_by_name(functions)
    for address, name in zip(probes, theirs, strict=True):
        found = table.lookup(address)
        if name == "??":
            assert found is None, hex(address)
        else:
            assert found is not None and found.start in starts[name], (hex(address), name)
    assert _name(table, next(s for s, _, n in functions if n == "qsort")) == "qsort"


@needs_gcc
@pytest.mark.parametrize("which", BINARIES)
def test_build_id_equals_readelf(programs: Programs, which: str) -> None:
    path = getattr(programs, which)
    expected = symtest.readelf_build_id(path)
    assert len(expected) == 40
    assert load_elf(path).build_id == expected
    with open(path, "rb") as f:
        assert read_build_id(f) == expected


@needs_gcc
def test_binary_without_build_id_still_resolves(tmp_path: Path) -> None:
    exe = tmp_path / "nobuildid"
    src = symtest.HERE / "symtest_lib.c"
    symtest.gcc("-O1", "-fPIC", "-shared", "-Wl,--build-id=none", src, "-o", exe)
    table = load_elf(exe)
    assert table.build_id == ""
    lib_add = next(s for s, _, n in symtest.function_symbols(exe) if n == "lib_add")
    assert _name(table, lib_add + 1) == "lib_add"


@pytest.mark.parametrize("path", ["/usr/bin/python3.11", _libc_path()], ids=["python3", "libc"])
def test_load_time(path: str) -> None:
    """Measured, printed (-s) and bounded generously: ~5 ms for python3's
    .dynsym and ~10 ms for libc's here, where pyelftools' per-symbol
    objects take 60-80 ms."""
    if not path or not os.path.exists(path):
        pytest.skip(f"{path or 'libc'} not present")
    began = time.perf_counter()
    table = load_elf(path)
    elapsed = time.perf_counter() - began
    print(f"{path}: {len(table)} functions in {elapsed * 1e3:.1f} ms")
    assert len(table) > 100 and elapsed < 1.0


# -- corrupt input -------------------------------------------------------------


def _corrupt_inputs(programs: Programs) -> dict[str, bytes]:
    good = programs.lib.read_bytes()
    rng = random.Random(1234)
    header_only = bytearray(good[:64])
    return {
        "empty": b"",
        "random bytes": bytes(rng.randrange(256) for _ in range(4096)),
        "ELF magic then noise": b"\x7fELF" + bytes(rng.randrange(256) for _ in range(4092)),
        "truncated to the header": bytes(header_only),
        "truncated in half": good[: len(good) // 2],
        "truncated before the section headers": good[: len(good) - 200],
        "text file": b"#!/bin/sh\necho hello\n",
    }


@needs_gcc
def test_corrupt_files_raise_elf_error(programs: Programs, tmp_path: Path) -> None:
    for label, data in _corrupt_inputs(programs).items():
        path = tmp_path / label.replace(" ", "_")
        path.write_bytes(data)
        with pytest.raises(ElfError):
            load_elf(path)


@needs_gcc
def test_garbled_symbol_table_loads_without_raising(programs: Programs, tmp_path: Path) -> None:
    """Random symbol entries (bad name offsets, section indexes, types) are
    skipped or kept as they are; the headers are intact, so it loads."""
    from elftools.elf.elffile import ELFFile

    data = bytearray(programs.lib.read_bytes())
    with open(programs.lib, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        at, size = symtab["sh_offset"], symtab["sh_size"]
    rng = random.Random(99)
    data[at : at + size] = bytes(rng.randrange(256) for _ in range(size))
    path = tmp_path / "garbled.so"
    path.write_bytes(bytes(data))
    table = load_elf(path)
    assert table.build_id == symtest.readelf_build_id(programs.lib)
    for vaddr in range(0, 0x4000, 0x10):
        found = table.lookup(vaddr)
        assert found is None or found.start <= vaddr


@needs_gcc
def test_a_symbol_table_linked_to_no_string_table_raises_elf_error(
    programs: Programs, tmp_path: Path
) -> None:
    data = bytearray(programs.lib.read_bytes())
    with open(programs.lib, "rb") as f:
        symtab = open_elf(f).section(".symtab")
    assert symtab is not None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<I", data, shoff + symtab.index * 64 + 0x28, 9999)  # sh_link
    path = tmp_path / "unlinked.so"
    path.write_bytes(bytes(data))
    with pytest.raises(ElfError, match="string table 9999"):
        load_elf(path)


def _name(table: ElfSymbols, vaddr: int) -> str:
    found = table.lookup(vaddr)
    return found.name if found else "??"


def _starts_by_name(functions: list[tuple[int, int, str]]) -> dict[str, set[int]]:
    starts: dict[str, set[int]] = defaultdict(set)
    for start, _, name in functions:
        starts[name].add(start)
    return starts


@pytest.mark.parametrize(
    "path", ["/bin/ls", "/usr/bin/python3", "/lib/x86_64-linux-gnu/libc.so.6", "/bin/true"]
)
def test_fast_build_id_agrees_with_the_general_path(path: str) -> None:
    from symbolizer.elf import _build_id, _fast_build_id, open_elf

    with open(path, "rb") as f:
        fast = _fast_build_id(f)
        assert fast is not None and len(fast) == 40
        assert fast == _build_id(open_elf(f))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x7fELF", b"\x7fELF\x01\x01" + b"\0" * 60, b"\x7fELF\x02\x01" + b"\xff" * 58],
    ids=["empty", "short", "elf32", "garbage-header"],
)
def test_fast_build_id_declines_what_it_does_not_handle(data: bytes) -> None:
    import io

    from symbolizer.elf import _fast_build_id

    assert _fast_build_id(io.BytesIO(data)) is None
