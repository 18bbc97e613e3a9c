"""Crafting hostile ELF files from real ones, for the bomb and fuzz tests.

`rewrite` keeps a file's bytes and program headers (so a program still
runs) and writes a new section header table at the end: existing
sections may be re-pointed at appended data (or a sparse hole) with new
flags, and new sections added. Only ELF64 little-endian, as on x86-64.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
CHDR64 = struct.Struct("<IIQQ")
SHF_COMPRESSED = 0x800
SHT_PROGBITS, SHT_SYMTAB = 1, 2


@dataclass
class NewSection:
    """Contents `data`, or a hole of `hole` bytes (a sparse file region)."""

    name: str
    data: bytes = b""
    hole: int = 0
    type: int = SHT_PROGBITS
    flags: int = 0


def sections(blob: bytes) -> list[tuple[str, list[int]]]:
    """(name, raw header fields) of each section of an ELF64 LE file."""
    e = EHDR.unpack_from(blob)
    shoff, shnum, shstrndx = e[6], e[12], e[13]
    raw = [list(SHDR.unpack_from(blob, shoff + i * SHDR.size)) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]
    out = []
    for fields in raw:
        end = blob.index(b"\0", strtab_off + fields[0])
        out.append((blob[strtab_off + fields[0] : end].decode(), fields))
    return out


def rewrite(
    blob: bytes,
    replace: dict[str, NewSection] | None = None,
    add: list[NewSection] | None = None,
) -> tuple[bytes, int]:
    """(new file bytes, size of a trailing hole to add with truncate()).

    Holes are placed after every real byte, so the caller writes the bytes
    then extends the file: nothing but metadata is stored for them."""
    replace, add = replace or {}, add or []
    old = sections(blob)
    names = [n for n, _ in old] + [s.name for s in add]
    shstrtab = b"\0" + b"".join(n.encode() + b"\0" for n in names if n)
    out = bytearray(blob)
    name_at = {n: shstrtab.index(b"\0" + n.encode() + b"\0") + 1 for n in names if n}
    headers: list[list[int]] = []
    holes: list[tuple[list[int], int]] = []

    def place(fields: list[int], sec: NewSection) -> None:
        fields[1], fields[2] = sec.type, sec.flags
        fields[8] = fields[8] or 1
        if sec.hole:
            holes.append((fields, sec.hole))
        else:
            out.extend(b"\0" * (-len(out) % 8))
            fields[4], fields[5] = len(out), len(sec.data)
            out.extend(sec.data)

    for n, f in old:
        fields = list(f)
        fields[0] = name_at.get(n, 0)
        if n in replace:
            fields[3] = fields[3] if replace[n].type != SHT_SYMTAB else 0
            place(fields, replace[n])
        headers.append(fields)
    for sec in add:
        fields = [name_at[sec.name], 0, 0, 0, 0, 0, 0, 0, 1, 0]
        place(fields, sec)
        headers.append(fields)
    shstr = NewSection(".shstrtab", shstrtab, type=3)
    shstrndx = next(i for i, (n, _) in enumerate(old) if n == ".shstrtab")
    place(headers[shstrndx], shstr)
    out.extend(b"\0" * (-len(out) % 8))
    shoff = len(out)
    end = shoff + SHDR.size * len(headers)
    hole_total = 0
    for fields, size in holes:
        fields[4], fields[5] = end + hole_total, size
        hole_total += size
    for fields in headers:
        out.extend(SHDR.pack(*fields))
    e = list(EHDR.unpack_from(out))
    e[6], e[12], e[13] = shoff, len(headers), shstrndx
    out[: EHDR.size] = EHDR.pack(*e)
    return bytes(out), hole_total


def zlib_bomb(claimed: int, real: int | None = None) -> bytes:
    """An SHF_COMPRESSED body: a header claiming `claimed` bytes, then a
    zlib stream of `real` zero bytes (default: as claimed, a true bomb)."""
    real = claimed if real is None else real
    comp = zlib.compressobj(9)
    parts = [CHDR64.pack(1, 0, claimed, 1)]
    chunk = bytes(1 << 20)
    left = real
    while left > 0:
        parts.append(comp.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(comp.flush())
    return b"".join(parts)


def uleb_run(n: int) -> bytes:
    """An .eh_frame whose first CIE's code alignment is a LEB128 of `n`
    bytes of 0xff (then 0x01): quadratic to decode without a bound."""
    body = b"\0\0\0\0" + b"\x01zR\0" + b"\xff" * n + b"\x01" + b"\x78\x10\x01\x1b"
    return struct.pack("<I", len(body)) + body + b"\0\0\0\0"


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ)
