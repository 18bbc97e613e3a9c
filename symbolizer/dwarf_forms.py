"""DWARF primitives: LEB128, abbreviation tables and attribute forms.

Written by hand rather than through pyelftools' construct-based parser
because the symbolizer walks every DIE of a compile unit to find its
inlined subroutines, and construct costs tens of microseconds per DIE.
Here most DIEs are skipped in one step: an abbreviation whose attributes
all have fixed-size forms gets its total size precomputed.

Every read is bounds-checked by Python's slicing and indexing: a
truncated or hostile section raises IndexError/ValueError/struct.error,
which the caller turns into "no debug info for this unit".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Tags and attributes the symbolizer uses.
TAG_COMPILE_UNIT, TAG_PARTIAL_UNIT, TAG_SKELETON_UNIT = 0x11, 0x3C, 0x4A
TAG_SUBPROGRAM, TAG_INLINED_SUBROUTINE = 0x2E, 0x1D
AT_NAME, AT_STMT_LIST, AT_LOW_PC, AT_HIGH_PC, AT_COMP_DIR = 0x03, 0x10, 0x11, 0x12, 0x1B
AT_ABSTRACT_ORIGIN, AT_DECL_LINE, AT_SPECIFICATION, AT_RANGES = 0x31, 0x3B, 0x47, 0x55
AT_CALL_COLUMN, AT_CALL_FILE, AT_CALL_LINE = 0x57, 0x58, 0x59
AT_LINKAGE_NAME, AT_MIPS_LINKAGE_NAME = 0x6E, 0x2007
AT_STR_OFFSETS_BASE, AT_ADDR_BASE, AT_RNGLISTS_BASE = 0x72, 0x73, 0x74
AT_GNU_ADDR_BASE = 0x2133

# Forms, grouped by how their value is read.
FORM_ADDR, FORM_STRING, FORM_STRP, FORM_LINE_STRP = 0x01, 0x08, 0x0E, 0x1F
FORM_REF_ADDR, FORM_SEC_OFFSET, FORM_INDIRECT, FORM_IMPLICIT_CONST = 0x10, 0x17, 0x16, 0x21
FORM_STRX, FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4 = 0x1A, 0x25, 0x26, 0x27, 0x28
FORM_GNU_STR_INDEX, FORM_GNU_ADDR_INDEX = 0x1F02, 0x1F01
FORM_ADDRX, FORM_ADDRX1, FORM_ADDRX2, FORM_ADDRX3, FORM_ADDRX4 = 0x1B, 0x29, 0x2A, 0x2B, 0x2C
FORM_RNGLISTX = 0x23
FORM_GNU_REF_ALT, FORM_GNU_STRP_ALT = 0x1F20, 0x1F21
CU_REF_FORMS = frozenset((0x11, 0x12, 0x13, 0x14, 0x15))  # ref1..ref8, ref_udata
STRX_FORMS = frozenset((FORM_STRX, FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4, 0x1F02))
ADDRX_FORMS = frozenset((FORM_ADDRX, FORM_ADDRX1, FORM_ADDRX2, FORM_ADDRX3, FORM_ADDRX4, 0x1F01))
CONSTANT_FORMS = frozenset((0x05, 0x06, 0x07, 0x0B, 0x0D, 0x0F, FORM_IMPLICIT_CONST))

# Sizes of forms whose size does not depend on the data: "A" is the
# address size, "O" the offset size (4, or 8 in 64-bit DWARF).
_FIXED: dict[int, int | str] = {
    0x01: "A", 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: "O", 0x10: "O",
    0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x17: "O", 0x19: 0, 0x1C: 4, 0x1D: "O",
    0x1E: 16, 0x1F: "O", 0x20: 8, 0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3,
    0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4, 0x1F20: "O", 0x1F21: "O",
}  # fmt: skip
_ULEB_FORMS = frozenset((0x0D, 0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02))
_BLOCK_LEN = {0x03: 2, 0x04: 4, 0x0A: 1}  # block2, block4, block1: length prefix size
_UNSIGNED = {1: "B", 2: "H", 4: "I", 8: "Q"}


class DwarfError(Exception):
    """Malformed DWARF: a bad form, abbreviation or length."""


MAX_LEB128 = 10  # bytes: enough for any 64-bit value


class LebError(ValueError):
    """A LEB128 that is truncated or longer than MAX_LEB128 bytes."""


def uleb(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of an unsigned LEB128 at `pos`.

    At most MAX_LEB128 bytes are read: a run of 0x80-0xff bytes in a
    hostile file is an error after ten of them, not a number growing by
    seven bits per byte (which made decoding 1.5 MB of 0xff quadratic).
    The one-byte case, nearly every LEB128 in DWARF, stays one branch.
    This is the only LEB128 decoder: agent.unwind.ehframe uses it too.
    """
    b = data[pos]  # IndexError past the end, as every other read here
    if b < 0x80:
        return b, pos + 1
    start = pos
    result, shift, last = b & 0x7F, 7, min(pos + MAX_LEB128, len(data))
    while True:
        pos += 1
        if pos >= last:
            raise LebError(f"LEB128 at 0x{start:x} is truncated or longer than {MAX_LEB128} bytes")
        b = data[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + 1
        shift += 7


def sleb(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of a signed LEB128 at `pos` (bounded as uleb)."""
    start = pos
    value, pos = uleb(data, pos)
    bits = 7 * (pos - start)
    if data[pos - 1] & 0x40:
        value -= 1 << bits
    return value, pos


def cstring(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\0", pos)
    return data[pos:end], end + 1


def unsigned(data: bytes, pos: int, size: int, little: bool = True) -> int:
    if size == 3:
        return int.from_bytes(data[pos : pos + 3], "little" if little else "big")
    return struct.unpack_from(("<" if little else ">") + _UNSIGNED[size], data, pos)[0]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Abbrev:
    """One abbreviation: the layout of every DIE that uses its code.

    `fixed` is the total size of its attributes when every form has a
    fixed size for this unit's address and offset sizes, else None.
    """

    tag: int
    children: bool
    attrs: tuple[tuple[int, int, int], ...]  # (attribute, form, implicit constant)
    fixed: int | None


def parse_abbrevs(data: bytes, pos: int, addr_size: int, offset_size: int) -> dict[int, Abbrev]:
    """The abbreviation table starting at `pos` (until its 0 code).

    Codes, tags, attributes and forms are nearly always one-byte LEB128s:
    that case is read inline (this runs once per unit, for hundreds of
    abbreviations)."""
    table: dict[int, Abbrev] = {}
    while True:
        code = data[pos]
        code, pos = (code, pos + 1) if code < 0x80 else uleb(data, pos)
        if code == 0:
            return table
        tag = data[pos]
        tag, pos = (tag, pos + 1) if tag < 0x80 else uleb(data, pos)
        children = data[pos] != 0
        pos += 1
        attrs: list[tuple[int, int, int]] = []
        while True:
            attr, form = data[pos], data[pos + 1]
            if attr < 0x80 and form < 0x80:
                pos += 2
            else:
                attr, pos = uleb(data, pos)
                form, pos = uleb(data, pos)
            if attr == 0 and form == 0:
                break
            const = 0
            if form == FORM_IMPLICIT_CONST:
                const, pos = sleb(data, pos)
            attrs.append((attr, form, const))
        table[code] = Abbrev(
            tag, children, tuple(attrs), _fixed_size(attrs, addr_size, offset_size)
        )


def _fixed_size(attrs: list[tuple[int, int, int]], addr_size: int, offset_size: int) -> int | None:
    total = 0
    for _, form, _ in attrs:
        size = _FIXED.get(form)
        if size is None:
            return None
        total += addr_size if size == "A" else offset_size if size == "O" else size  # type: ignore[operator]
    return total


def skip_form(data: bytes, pos: int, form: int, addr_size: int, offset_size: int) -> int:
    """The position after one attribute value of `form`."""
    size = _FIXED.get(form)
    if size is not None:
        return pos + (addr_size if size == "A" else offset_size if size == "O" else int(size))
    if form in _ULEB_FORMS:
        while data[pos] & 0x80:
            pos += 1
        return pos + 1
    if form in (0x09, 0x18):  # block, exprloc: ULEB length
        length, pos = uleb(data, pos)
        return pos + length
    if form in _BLOCK_LEN:
        n = _BLOCK_LEN[form]
        return pos + n + unsigned(data, pos, n)
    if form == FORM_STRING:
        return data.index(b"\0", pos) + 1
    if form == FORM_INDIRECT:
        real, pos = uleb(data, pos)
        return skip_form(data, pos, real, addr_size, offset_size)
    raise DwarfError(f"unknown attribute form 0x{form:x}")


def read_form(
    data: bytes, pos: int, form: int, const: int, addr_size: int, offset_size: int
) -> tuple[int | bytes, int]:
    """One attribute value: an int (constants, addresses, offsets, indexes,
    references as stored) or bytes (inline strings and blocks)."""
    if form == FORM_IMPLICIT_CONST:
        return const, pos
    size = _FIXED.get(form)
    if size is not None:
        n = addr_size if size == "A" else offset_size if size == "O" else int(size)
        if n == 0:
            return 1, pos  # flag_present
        if n == 16:
            return data[pos : pos + 16], pos + 16
        return unsigned(data, pos, n), pos + n
    if form == 0x0D:
        return sleb(data, pos)
    if form in _ULEB_FORMS:
        return uleb(data, pos)
    if form == FORM_STRING:
        return cstring(data, pos)
    if form == FORM_INDIRECT:
        real, pos = uleb(data, pos)
        return read_form(data, pos, real, const, addr_size, offset_size)
    end = skip_form(data, pos, form, addr_size, offset_size)
    return data[pos:end], end
