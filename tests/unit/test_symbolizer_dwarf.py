"""DWARF symbolization, differential against llvm-symbolizer.

Programs are compiled here in many configurations; for hundreds of
addresses spread over every function, our inline chain (function, file,
line, column per frame) must equal llvm-symbolizer's. Names are compared
mangled (llvm-symbolizer --no-demangle against our system_name), so a
demangler difference cannot hide a DWARF one; demangling has its own tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from symbolizer import Symbolizer
from symbolizer.debuginfo import DebugSearch
from tests.programs import symtest, symtest_dwarf
from tests.programs.symtest_dwarf import Frame

pytestmark = [
    pytest.mark.skipif(not symtest.have_gcc(), reason="gcc is not installed"),
    pytest.mark.skipif(shutil.which("llvm-symbolizer") is None, reason="no llvm-symbolizer"),
]

C_BUILDS = {
    "O0-dwarf4-pie": ("-O0", "-g", "-gdwarf-4", "-fPIE", "-pie"),
    "O0-dwarf5-nopie": ("-O0", "-g", "-gdwarf-5", "-fno-pie", "-no-pie"),
    "O2-dwarf4-pie": ("-O2", "-g", "-gdwarf-4", "-fPIE", "-pie"),
    "O2-dwarf5-pie": ("-O2", "-g", "-gdwarf-5", "-fPIE", "-pie"),
    "O2-dwarf5-nopie": ("-O2", "-g", "-gdwarf-5", "-fno-pie", "-no-pie"),
    "O2-dwarf5-zlib": ("-O2", "-g", "-gdwarf-5", "-gz=zlib"),
    "O2-dwarf4-zlib-gnu": ("-O2", "-g", "-gdwarf-4", "-gz=zlib-gnu"),
    "O3-dwarf5-shared": ("-O3", "-g", "-gdwarf-5", "-fPIC", "-shared"),
    "O2-dwarf5-64bit-dwarf": ("-O2", "-g", "-gdwarf-5", "-gdwarf64"),
}


def ours(sym: Symbolizer, path: Path, address: int) -> list[Frame]:
    r = sym.resolve_elf(str(path), address)
    if not r.lines:
        return [("??", "", 0, 0)]
    return [(ln.system_name or ln.function, ln.file, ln.line, ln.column) for ln in r.lines]


def same(mine: list[Frame], want: list[Frame], starts: dict[str, int]) -> bool:
    """Equal, except that the outermost frame's name (from the symbol table)
    may be another alias of the same function: C++ emits complete and base
    constructors (C1/C2) at one address, and tools pick different ones."""
    if mine == want:
        return True
    if len(mine) == len(want) == 1 and mine[0][1:] == ("", 0, 0) and want[0][2] == 0:
        # no line row: llvm-symbolizer shows the STT_FILE name from .symtab; we show none
        mine = [(mine[0][0], *want[0][1:])]
    if len(mine) != len(want) or mine[:-1] != want[:-1] or mine[-1][1:] != want[-1][1:]:
        return False
    a, b = mine[-1][0], want[-1][0]
    return a in starts and starts.get(a) == starts.get(b)


def compare(sym: Symbolizer, path: Path, oracle: Path | None = None) -> int:
    """Assert equality on every probe; returns how many had inlined frames."""
    probes = symtest_dwarf.probe_addresses(oracle or path)
    theirs = symtest_dwarf.llvm_frames(oracle or path, probes)
    starts = {name: start for start, _, name in symtest.function_symbols(oracle or path)}
    mismatches = [
        (hex(a), mine, want)
        for a, want in zip(probes, theirs, strict=True)
        if not same(mine := ours(sym, path, a), want, starts)
    ]
    assert not mismatches, f"{len(mismatches)} of {len(probes)} differ, e.g. {mismatches[:3]}"
    assert len(probes) >= 100
    return sum(len(t) > 1 for t in theirs)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dwarf")


def no_debug_dirs() -> Symbolizer:
    return Symbolizer(debug_search=DebugSearch((), ()))


@pytest.mark.parametrize("name", C_BUILDS)
def test_c_equals_llvm_symbolizer(out: Path, name: str) -> None:
    exe = symtest_dwarf.build_c(out, name, *C_BUILDS[name])
    inlined = compare(no_debug_dirs(), exe)
    if name.startswith(("O2", "O3")):
        assert inlined > 10, "expected inlined frames at -O2"


def test_cpp_templates_equal_llvm_symbolizer(out: Path) -> None:
    exe = symtest_dwarf.build_cpp(out)
    assert compare(no_debug_dirs(), exe) > 10


@pytest.mark.skipif(not symtest_dwarf.have_rustc(), reason="rustc is not installed")
def test_rust_equals_llvm_symbolizer(out: Path) -> None:
    exe = symtest_dwarf.build_rust(out)
    assert compare(no_debug_dirs(), exe) > 10


@pytest.mark.parametrize("by", ["build-id", "debuglink"])
def test_stripped_binary_uses_its_separate_debug_file(out: Path, tmp_path: Path, by: str) -> None:
    """The answers for the stripped binary equal llvm-symbolizer's for the
    unstripped one: the debug file was found (in a private debug root)."""
    exe = symtest_dwarf.build_c(tmp_path, "split", "-O2", "-g")
    root = tmp_path / "debugroot"
    stripped = symtest_dwarf.split_debug(exe, tmp_path, root, by)
    sym = Symbolizer(debug_search=DebugSearch((str(root),), ()))
    compare(sym, stripped, oracle=exe)
    table = sym.load_file(str(stripped))
    assert table.debug_file.endswith(".debug")


def test_debuglink_with_a_wrong_crc_is_refused(tmp_path: Path) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "crc", "-O2", "-g")
    stripped = symtest_dwarf.split_debug(exe, tmp_path, tmp_path, "debuglink")
    debug = tmp_path / "crc.debug"
    debug.write_bytes(debug.read_bytes() + b"\0")  # same name, other contents
    table = no_debug_dirs().load_file(str(stripped))
    assert table.dwarf is None and table.debug_file == ""


def test_debuginfod_cache_layout(tmp_path: Path) -> None:
    exe = symtest_dwarf.build_c(tmp_path, "dfd", "-O2", "-g")
    stripped = symtest_dwarf.split_debug(exe, tmp_path, tmp_path / "unused", "build-id")
    build_id = symtest.readelf_build_id(exe)
    cache = tmp_path / "debuginfod"
    (cache / build_id).mkdir(parents=True)
    built = tmp_path / "unused" / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    shutil.move(built, cache / build_id / "debuginfo")
    sym = Symbolizer(debug_search=DebugSearch((), (str(cache),)))
    compare(sym, stripped, oracle=exe)


def test_zstd_compressed_sections(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    exe = symtest_dwarf.build_c(tmp_path, "zstd", "-O2", "-g")
    packed = tmp_path / "zstd.packed"
    symtest_dwarf.run("objcopy", "--compress-debug-sections=zstd", exe, packed)
    flags = symtest_dwarf.run("readelf", "-S", "-W", packed)
    assert any(".debug_info" in ln and " C " in ln for ln in flags.splitlines())
    compare(no_debug_dirs(), packed, oracle=exe)
