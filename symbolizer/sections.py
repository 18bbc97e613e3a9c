"""ELF section contents by name, decompressed, with a bound on their size.

DWARF readers need a handful of sections (.debug_info, .debug_line, ...)
in full. They may be stored three ways:

- plain bytes;
- SHF_COMPRESSED (the gABI form, `gcc -gz`, `objcopy --compress-debug-sections`):
  an Elf32/64_Chdr (type, size, alignment) then a zlib or zstd stream;
- the older GNU form, a section named `.zdebug_*` holding "ZLIB", the
  size as 8 big-endian bytes, then a zlib stream.

zstd needs the `zstandard` package; without it such a section is reported
as unsupported rather than misread. Every byte read and every byte
decompressed is taken from the file's `Budget` first: the size a header
claims is checked against what is left *before* decompressing, and the
decompressor never produces more than that size (zlib's max_length, a
capped zstd stream), so a header claiming 6 GB or a zip bomb costs at
most what the budget has left, and `max_size` per section.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import IO

from symbolizer.budget import Budget, ElfError

SHF_COMPRESSED = 0x800
ELFCOMPRESS_ZLIB, ELFCOMPRESS_ZSTD = 1, 2
MAX_SECTION_SIZE = 512 << 20  # decompressed bytes per section


class SectionError(ElfError):
    """A section that cannot be read: truncated, corrupt, too big or unsupported."""


@dataclass(frozen=True)
class SectionHeader:
    name: str
    type: str
    flags: int
    offset: int
    size: int
    addr: int


def read_section(
    f: IO[bytes],
    header: SectionHeader,
    elfclass: int,
    little: bool,
    max_size: int = MAX_SECTION_SIZE,
    budget: Budget | None = None,
) -> bytes:
    """The contents of one section, decompressed if it is compressed.

    Raises SectionError, or BudgetExceeded when `budget` cannot pay for it."""
    budget = budget or Budget(max_bytes=max_size)
    if header.type == "SHT_NOBITS":
        return b""
    budget.take_bytes(header.size, f"{header.name}: reading")
    if header.size > max_size:
        raise SectionError(f"{header.name}: {header.size} bytes is more than the limit {max_size}")
    f.seek(header.offset)
    raw = f.read(header.size)
    if len(raw) != header.size:
        raise SectionError(f"{header.name}: truncated ({len(raw)} of {header.size} bytes)")
    if header.flags & SHF_COMPRESSED:
        return _gabi(header.name, raw, elfclass, little, max_size, budget)
    if header.name.startswith(".zdebug") and raw[:4] == b"ZLIB" and len(raw) >= 12:
        (size,) = struct.unpack_from(">Q", raw, 4)
        _check_size(header.name, size, max_size, budget)
        return _inflate(header.name, raw[12:], size)
    return raw


def _gabi(
    name: str, raw: bytes, elfclass: int, little: bool, max_size: int, budget: Budget
) -> bytes:
    order = "<" if little else ">"
    chdr = struct.Struct(order + ("IIQQ" if elfclass == 64 else "III"))
    if len(raw) < chdr.size:
        raise SectionError(f"{name}: compressed section shorter than its header")
    ctype, *rest = chdr.unpack_from(raw)
    size = rest[1] if elfclass == 64 else rest[0]
    body = raw[chdr.size :]
    if ctype not in (ELFCOMPRESS_ZLIB, ELFCOMPRESS_ZSTD):
        raise SectionError(f"{name}: unknown compression type {ctype}")
    _check_size(name, size, max_size, budget)
    if ctype == ELFCOMPRESS_ZLIB:
        return _inflate(name, body, size)
    return _unzstd(name, body, size)


def _check_size(name: str, size: int, max_size: int, budget: Budget) -> None:
    """The claimed size, paid for before a byte is decompressed."""
    budget.take_bytes(size, f"{name}: decompressing")
    if size > max_size:
        raise SectionError(f"{name}: decompresses to {size} bytes, more than the limit {max_size}")


def _inflate(name: str, body: bytes, size: int) -> bytes:
    try:
        out = zlib.decompressobj().decompress(body, size)
    except zlib.error as exc:
        raise SectionError(f"{name}: corrupt zlib data: {exc}") from None
    if len(out) != size:
        raise SectionError(f"{name}: decompressed {len(out)} bytes, header says {size}")
    return out


def _unzstd(name: str, body: bytes, size: int) -> bytes:
    """A streaming read capped at `size`: a one-shot decompress() would
    allocate whatever the frame header claims as its content size."""
    try:
        import zstandard
    except ImportError:
        raise SectionError(f"{name}: zstd-compressed and the zstandard module is missing") from None
    parts: list[bytes] = []
    got = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while got < size:
                chunk = reader.read(min(size - got, 1 << 20))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
    except zstandard.ZstdError as exc:
        raise SectionError(f"{name}: corrupt zstd data: {exc}") from None
    if got != size:
        raise SectionError(f"{name}: decompressed {got} bytes, header says {size}")
    return b"".join(parts)
