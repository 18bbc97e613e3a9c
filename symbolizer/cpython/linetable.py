"""The source line of a bytecode offset, from a code object's line table bytes.

Three formats, each documented in that release's Objects/lnotab_notes.txt
(3.11+: InternalDocs/code_objects.md / locations.md); all start at
co_firstlineno, and every function here takes the offset in *bytes* of
bytecode (f_lasti in bytes, or code units * 2):

- 3.8, 3.9 `co_lnotab`: (bytecode delta: unsigned byte, line delta:
  signed byte) pairs; the line of an offset is the line reached before the
  cumulative bytecode offset first passes it (PyCode_Addr2Line).
- 3.10 `co_linetable` (PEP 626): (start delta in bytes: unsigned, line
  delta: signed, -128 = no line) pairs, each covering [start, start+delta).
- 3.11+ location table: entries covering 1-8 code units; the first byte
  is 1CCCCLLL (code C, length L+1); C=15 no location, 14 long form
  (svarint line delta, 3 varints), 13 no columns (svarint line delta),
  10-12 one line (delta C-10, two column bytes), 0-9 short form (delta 0,
  one column byte). Varints are 6-bit chunks, 0x40 = more; a signed
  varint keeps the sign in bit 0.

The tables come from another process, so every decoder only walks the
bytes given (no loop without progress) and a truncated table ends it.
None means "no line" (an artificial instruction, or a table that does not
reach the offset).
"""

from __future__ import annotations

NO_LINE_310 = -128


def lnotab_line(table: bytes, firstlineno: int, offset: int) -> int:
    """3.8/3.9: the line of bytecode byte `offset` from co_lnotab."""
    line, addr = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        if addr > offset:
            break
        line += _signed8(table[i + 1])
    return line


def linetable310_line(table: bytes, firstlineno: int, offset: int) -> int | None:
    """3.10: the line of bytecode byte `offset` from co_linetable (PEP 626)."""
    line, start = firstlineno, 0
    for i in range(0, len(table) - 1, 2):
        end = start + table[i]
        delta = _signed8(table[i + 1])
        if delta != NO_LINE_310:
            line += delta
        if start <= offset < end:
            return None if delta == NO_LINE_310 else line
        start = end
    return None


def location_line(table: bytes, firstlineno: int, offset: int) -> int | None:
    """3.11+: the line of bytecode byte `offset` from the location table."""
    unit, line, start, pos = offset // 2, firstlineno, 0, 0
    while pos < len(table):
        first = table[pos]
        if not first & 0x80:
            return None  # not an entry's first byte: a corrupt table
        code, end = (first >> 3) & 15, start + (first & 7) + 1
        pos += 1
        delta: int | None = 0
        if code == 15:
            delta = None
        elif code in (13, 14):
            value, pos = _varint(table, pos)
            delta = (value >> 1) * (-1 if value & 1 else 1)
            pos = _skip_varints(table, pos, 3 if code == 14 else 0)
        elif code >= 10:
            delta, pos = code - 10, pos + 2
        else:
            pos += 1
        if delta is not None:
            line += delta
        if start <= unit < end:
            return None if delta is None else line
        start = end
    return None


def line_for(version: tuple[int, int], table: bytes, firstlineno: int, offset: int) -> int | None:
    """The line of bytecode byte `offset` with the version's table format."""
    if version >= (3, 11):
        return location_line(table, firstlineno, offset)
    if version == (3, 10):
        return linetable310_line(table, firstlineno, offset)
    return lnotab_line(table, firstlineno, offset)


def _signed8(b: int) -> int:
    return b - 256 if b >= 128 else b


def _varint(table: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint at `pos` and the position after it; a varint cut
    off by the table's end reads as what it has."""
    value = shift = 0
    while pos < len(table):
        b = table[pos]
        pos += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            break
    return value, pos


def _skip_varints(table: bytes, pos: int, n: int) -> int:
    for _ in range(n):
        _, pos = _varint(table, pos)
    return pos
