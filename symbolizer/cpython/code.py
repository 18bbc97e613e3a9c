"""Code objects of a live process → qualname, file name, first line, line table.

A Python frame from BPF is a code object's address in the profiled
process. Its names are PyUnicode objects and its line table a bytes object,
read here with bounded process_vm_readv reads:

- the object must be a code object: its ob_type must equal the address of
  `PyCode_Type` in that process (the ELF symbol plus the mapping's load
  bias, which the caller knows from /proc/PID/maps), otherwise
  BadCodeObject: a stale or garbage pointer is refused before any of its
  fields is followed;
- strings must be compact (the compiler only makes compact ones) of kind
  1, 2 or 4; at most MAX_NAME (names) or MAX_PATH (file names) code
  points are read, longer ones are cut and end in "…";
- a line table longer than MAX_LINETABLE is refused.

Every read is bounded, nothing loops on the other process's data, so
garbage costs a few small reads and one exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from symbolizer.cpython.layout import WalkLayout
from symbolizer.cpython.linetable import line_for
from symbolizer.cpython.memory import ProcessMemory

MAX_NAME, MAX_PATH = 1024, 4096  # code points
MAX_LINETABLE = 64 << 10  # bytes; the largest in the 3.11 stdlib is ~9 KiB
_KINDS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}


class BadCodeObject(Exception):
    """The address does not hold a usable code object (or one of its strings)."""


@dataclass(frozen=True)
class CodeInfo:
    """What a Python frame needs of its code object."""

    name: str  # co_qualname (3.11+), co_name before
    filename: str
    firstlineno: int
    linetable: bytes  # co_lnotab (<=3.9) / co_linetable

    def line(self, version: tuple[int, int], offset: int) -> int | None:
        """The source line of bytecode byte `offset` (None: no line)."""
        return line_for(version, self.linetable, self.firstlineno, offset)


def header_span(layout: WalkLayout) -> int:
    """Bytes from a code object's start that hold every field read here."""
    return 8 + max(
        layout.object_type,
        layout.code_filename,
        layout.code_name,
        layout.code_qualname,
        layout.code_firstlineno,
        layout.code_linetable,
    )


def fingerprint(layout: WalkLayout, header: bytes) -> tuple[int, ...]:
    """The fields that identify a code object: type, string and table
    pointers, first line. A freed code object whose address is reused by
    another almost surely differs in one of them."""
    ptrs = [layout.object_type, layout.code_filename, layout.code_name, layout.code_linetable]
    if layout.code_qualname >= 0:
        ptrs.append(layout.code_qualname)
    out = [struct.unpack_from("<Q", header, off)[0] for off in ptrs]
    out.append(struct.unpack_from("<i", header, layout.code_firstlineno)[0])
    return tuple(out)


def read_code(mem: ProcessMemory, layout: WalkLayout, code_type: int, address: int) -> CodeInfo:
    """The code object at `address`; BadCodeObject or MemoryReadError."""
    header = mem.read(address, header_span(layout))
    return decode_code(mem, layout, code_type, header)


def decode_code(mem: ProcessMemory, layout: WalkLayout, code_type: int, header: bytes) -> CodeInfo:
    """A code object from its header bytes (as read by read_code)."""

    def ptr(off: int) -> int:
        return int(struct.unpack_from("<Q", header, off)[0])

    if ptr(layout.object_type) != code_type:
        raise BadCodeObject(f"type {ptr(layout.object_type):#x} is not PyCode_Type")
    name_at = layout.code_qualname if layout.code_qualname >= 0 else layout.code_name
    return CodeInfo(
        read_str(mem, layout, ptr(name_at), MAX_NAME),
        read_str(mem, layout, ptr(layout.code_filename), MAX_PATH),
        struct.unpack_from("<i", header, layout.code_firstlineno)[0],
        read_bytes(mem, layout, ptr(layout.code_linetable), MAX_LINETABLE),
    )


def read_str(mem: ProcessMemory, layout: WalkLayout, address: int, limit: int) -> str:
    """A compact str object's text, cut to `limit` code points."""
    head = mem.read(address, layout.unicode_ascii_size)
    length = struct.unpack_from("<q", head, layout.unicode_length)[0]
    state = struct.unpack_from("<I", head, layout.unicode_state)[0]
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or kind not in _KINDS or length < 0:
        raise BadCodeObject(f"str at {address:#x}: state {state:#x}, length {length}")
    data = address + (layout.unicode_ascii_size if ascii_ else layout.unicode_compact_size)
    n = min(length, limit)
    try:
        text = mem.read(data, n * kind).decode(_KINDS[kind])
    except UnicodeDecodeError as exc:
        raise BadCodeObject(f"str at {address:#x}: {exc}") from exc
    return text + "…" if length > limit else text


def read_bytes(mem: ProcessMemory, layout: WalkLayout, address: int, limit: int) -> bytes:
    """A bytes object's contents, refused if longer than `limit`."""
    size = struct.unpack("<q", mem.read(address + layout.bytes_ob_size, 8))[0]
    if not 0 <= size <= limit:
        raise BadCodeObject(f"bytes at {address:#x}: size {size} (most {limit})")
    return mem.read(address + layout.bytes_ob_sval, size)
