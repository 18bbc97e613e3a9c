"""ELF section contents by name, decompressed, with a bound on their size.

DWARF readers need a handful of sections (.debug_info, .debug_line, ...)
in full. They may be stored three ways:

- plain bytes;
- SHF_COMPRESSED (the gABI form, `gcc -gz`, `objcopy --compress-debug-sections`):
  an Elf32/64_Chdr (type, size, alignment) then a zlib or zstd stream;
- the older GNU form, a section named `.zdebug_*` holding "ZLIB", the
  size as 8 big-endian bytes, then a zlib stream.

zstd needs the `zstandard` package; without it such a section is reported
as unsupported rather than misread. Decompression stops at the size the
header announces and at `max_size`, so a hostile header claiming a huge
size, or a zip bomb, costs at most `max_size` bytes of memory.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO, Any

SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB, ELFCOMPRESS_ZSTD = 1, 2
MAX_SECTION_SIZE = 512 << 20  # decompressed bytes per section


class SectionError(Exception):
    """A section that cannot be read: truncated, corrupt, too big or unsupported."""


@dataclass(frozen=True)
class SectionHeader:
    name: str
    type: str
    flags: int
    offset: int
    size: int
    addr: int


def section_headers(elf: Any) -> dict[str, SectionHeader]:
    """Name → header of every section with contents (first of each name)."""
    found: dict[str, SectionHeader] = {}
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_NOBITS" or sec.name in found:
            continue
        found[sec.name] = SectionHeader(
            sec.name,
            sec["sh_type"],
            sec["sh_flags"],
            sec["sh_offset"],
            sec["sh_size"],
            sec["sh_addr"],
        )
    return found


def read_section(
    f: IO[bytes],
    header: SectionHeader,
    elfclass: int,
    little: bool,
    max_size: int = MAX_SECTION_SIZE,
) -> bytes:
    """The contents of one section, decompressed if it is compressed."""
    if header.size > max_size:
        raise SectionError(f"{header.name}: {header.size} bytes is more than the limit {max_size}")
    f.seek(header.offset)
    raw = f.read(header.size)
    if len(raw) != header.size:
        raise SectionError(f"{header.name}: truncated ({len(raw)} of {header.size} bytes)")
    if header.flags & SHF_COMPRESSED:
        return _gabi(header.name, raw, elfclass, little, max_size)
    if header.name.startswith(".zdebug") and raw[:4] == b"ZLIB" and len(raw) >= 12:
        (size,) = struct.unpack_from(">Q", raw, 4)
        return _inflate(header.name, raw[12:], size, max_size)
    return raw


def _gabi(name: str, raw: bytes, elfclass: int, little: bool, max_size: int) -> bytes:
    order = "<" if little else ">"
    chdr = struct.Struct(order + ("IIQQ" if elfclass == 64 else "III"))
    if len(raw) < chdr.size:
        raise SectionError(f"{name}: compressed section shorter than its header")
    ctype, *rest = chdr.unpack_from(raw)
    size = rest[1] if elfclass == 64 else rest[0]
    body = raw[chdr.size :]
    if ctype == ELFCOMPRESS_ZLIB:
        return _inflate(name, body, size, max_size)
    if ctype == ELFCOMPRESS_ZSTD:
        return _unzstd(name, body, size, max_size)
    raise SectionError(f"{name}: unknown compression type {ctype}")


def _check_size(name: str, size: int, max_size: int) -> None:
    if size > max_size:
        raise SectionError(f"{name}: decompresses to {size} bytes, more than the limit {max_size}")


def _inflate(name: str, body: bytes, size: int, max_size: int) -> bytes:
    _check_size(name, size, max_size)
    try:
        out = zlib.decompressobj().decompress(body, size)
    except zlib.error as exc:
        raise SectionError(f"{name}: corrupt zlib data: {exc}") from None
    if len(out) != size:
        raise SectionError(f"{name}: decompressed {len(out)} bytes, header says {size}")
    return out


def _unzstd(name: str, body: bytes, size: int, max_size: int) -> bytes:
    _check_size(name, size, max_size)
    try:
        import zstandard
    except ImportError:
        raise SectionError(f"{name}: zstd-compressed and the zstandard module is missing") from None
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise SectionError(f"{name}: corrupt zstd data: {exc}") from None
    if len(out) != size:
        raise SectionError(f"{name}: decompressed {len(out)} bytes, header says {size}")
    return out
