"""Is this ELF file a CPython interpreter, which version, and where are its roots?

A Python process runs the interpreter loop from wherever CPython was linked:
a `python3.X` executable, `libpython3.X.so`, or an embedding binary (uwsgi,
a game engine) that carries CPython inside it. The file name says nothing
reliable, so the file is recognised by its symbols: `_PyRuntime` (the one
global root of every interpreter and thread) and `_PyEval_EvalFrameDefault`
(the loop whose native frames the Python frames replace), taken from
.dynsym or .symtab.

The version comes from the file's data, never from its name:

- 3.11+: `Py_Version`, a `const unsigned long` holding PY_VERSION_HEX, read
  from the file bytes at its address;
- 3.8-3.10: the public C API each release added, which every build exports
  (`Py_BytesMain` 3.8, `PyFrame_GetCode` 3.9, `Py_NewRef` 3.10). The
  "3.X.Y" PY_VERSION string is not a usable marker: the linker merges it
  into the tail of other strings (pyenv's builds hold it only as the end of
  their build path), and the soname is absent from static executables;
- 3.13+: the `_Py_DebugOffsets` header at the start of `_PyRuntime` must
  carry the "xdebugpy" cookie and the same version; its `free_threaded`
  field marks a free-threaded build (3.13t), whose object and frame layouts
  differ: unsupported.

Anything else (3.7 and older, 3.15 and newer, free-threaded, a 32-bit or
non-x86_64 file) raises UnsupportedInterpreter naming what was found.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from symbolizer.budget import ElfError
from symbolizer.elffile import EM_X86_64, ElfFile

RUNTIME, EVAL = "_PyRuntime", "_PyEval_EvalFrameDefault"
EVAL_COLD = EVAL + ".cold"  # GCC's hot/cold split, a local symbol in .symtab
_MARKERS = {"Py_BytesMain": 8, "PyFrame_GetCode": 9, "Py_NewRef": 10}
_WANTED = (RUNTIME, EVAL, EVAL_COLD, "Py_Version", "PyCode_Type", *_MARKERS)
SUPPORTED = tuple((3, minor) for minor in range(8, 15))
DEBUG_COOKIE = b"xdebugpy"


class UnsupportedInterpreter(Exception):
    """A CPython the walker cannot follow; the message names the version."""


@dataclass(frozen=True)
class Interpreter:
    """What one CPython file holds, as link-time (file-relative) addresses."""

    version: tuple[int, int]
    runtime: int  # st_value of _PyRuntime
    runtime_size: int
    eval_start: int  # [start, end) of _PyEval_EvalFrameDefault
    eval_end: int
    code_type: int  # st_value of PyCode_Type: the type every code object points to
    hexversion: int = 0  # PY_VERSION_HEX where the file holds it (3.11+), else 0
    # [start, end) of every part of the loop: the symbol's, and its .cold part
    # when .symtab names it (a stripped file's split-off part is unnamed:
    # docs/python.md, "Known limits")
    eval_ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ElfSymbol:
    value: int
    size: int


def elf_symbols(elf: ElfFile, names: Collection[str]) -> dict[str, ElfSymbol]:
    """Defined symbols of any type called `names`, .dynsym's first:
    `_PyRuntime`, `Py_Version` and `PyCode_Type` are data objects."""
    found: dict[str, ElfSymbol] = {}
    for _table, sec in elf.symbol_tables():
        for raw, _info, _shndx, value, size in elf.symbol_entries(sec):
            text = raw.split(b"@", 1)[0].decode("utf-8", "replace")
            if value and text in names and text not in found:
                found[text] = ElfSymbol(value, size)
    return found


def file_bytes(elf: ElfFile, vaddr: int, size: int) -> bytes:
    """`size` bytes the file holds for a virtual address (statically
    initialised data: `Py_Version`, the debug offsets in `_PyRuntime`)."""
    for seg in elf.segments():
        if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
            elf.budget.take_bytes(size, "interpreter data")
            elf.stream.seek(seg.offset + vaddr - seg.vaddr)
            data = elf.stream.read(size)
            if len(data) == size:
                return data
    raise ElfError(f"no file bytes for {size} bytes at {vaddr:#x}")


def find_interpreter(elf: ElfFile) -> Interpreter | None:
    """The file's CPython facts; None if it holds no CPython at all (or is
    not a 64-bit little-endian file: the only symbol layout read here)."""
    if elf.elfclass != 64 or not elf.little:
        return None
    syms = elf_symbols(elf, _WANTED)
    if RUNTIME not in syms or EVAL not in syms:
        return None
    if elf.machine != EM_X86_64:
        raise UnsupportedInterpreter(f"CPython for machine {elf.machine}, not x86_64")
    hexversion = 0
    if "Py_Version" in syms:
        (hexversion,) = struct.unpack("<Q", file_bytes(elf, syms["Py_Version"].value, 8))
        version = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    else:
        version = _version_from_api(syms)
    if version not in SUPPORTED:
        raise UnsupportedInterpreter(f"CPython {version[0]}.{version[1]} is not supported")
    runtime, ev = syms[RUNTIME], syms[EVAL]
    if version >= (3, 13):
        _check_debug_header(file_bytes(elf, runtime.value, 24), hexversion)
    if "PyCode_Type" not in syms:
        raise UnsupportedInterpreter(f"CPython {version[0]}.{version[1]} without PyCode_Type")
    return Interpreter(
        version,
        runtime.value,
        runtime.size,
        ev.value,
        ev.value + ev.size,
        syms["PyCode_Type"].value,
        hexversion,
        _eval_ranges(syms),
    )


def _eval_ranges(syms: dict[str, ElfSymbol]) -> tuple[tuple[int, int], ...]:
    parts = [syms[name] for name in (EVAL, EVAL_COLD) if name in syms]
    return tuple((p.value, p.value + p.size) for p in parts)


def _version_from_api(syms: Collection[str]) -> tuple[int, int]:
    """3.8-3.10 by the newest API the file exports; (3, 7) means older."""
    return (3, max((m for name, m in _MARKERS.items() if name in syms), default=7))


def _check_debug_header(head: bytes, hexversion: int) -> None:
    """3.13+: the cookie, the same version, and no free-threading."""
    cookie, version, free_threaded = struct.unpack("<8sQQ", head)
    label = f"CPython {hexversion >> 24}.{(hexversion >> 16) & 0xFF}"
    if cookie != DEBUG_COOKIE or version != hexversion:
        raise UnsupportedInterpreter(
            f"{label}: _PyRuntime has no matching debug offsets "
            f"(cookie {cookie!r}, version {version:#x})"
        )
    if free_threaded:
        raise UnsupportedInterpreter(f"{label}: free-threaded builds are not supported")
