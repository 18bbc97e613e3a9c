"""DWARF compile units: headers, their top DIE, attribute values, ranges.

A `Unit` is what every attribute of a compile unit needs to be read: its
address and offset sizes, its abbreviations, and the bases DWARF 5 puts
in the top DIE (str_offsets, addr, rnglists), which index forms
(strx, addrx, rnglistx) are relative to. Reading a unit costs its header
and its first DIE only; `dwarf.py` walks the rest lazily.

Supported: DWARF 2-5 compile and partial units, 32- and 64-bit DWARF,
.debug_ranges (v2-4) and .debug_rnglists (v5), .debug_addr,
.debug_str_offsets, .debug_line_str. Not supported: type units (skipped),
split DWARF (.dwo files), and references into a dwz supplementary file
(DW_FORM_GNU_ref_alt / GNU_strp_alt): such names come out empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from symbolizer.budget import CHECK_EVERY, Budget
from symbolizer.dwarf_forms import (
    ADDRX_FORMS,
    AT_ADDR_BASE,
    AT_COMP_DIR,
    AT_GNU_ADDR_BASE,
    AT_HIGH_PC,
    AT_LOW_PC,
    AT_RANGES,
    AT_RNGLISTS_BASE,
    AT_STMT_LIST,
    AT_STR_OFFSETS_BASE,
    CONSTANT_FORMS,
    CU_REF_FORMS,
    FORM_LINE_STRP,
    FORM_REF_ADDR,
    FORM_RNGLISTX,
    FORM_STRP,
    STRX_FORMS,
    Abbrev,
    DwarfError,
    cstring,
    parse_abbrevs,
    read_form,
    uleb,
    unsigned,
)

Attrs = dict[int, tuple[int, int | bytes]]  # attribute → (form, raw value)
_TYPE_UNITS = (2, 6)  # DW_UT_type, DW_UT_split_type
_MAX_RANGES = 65536  # entries per range list
ADDRX_FORMS_ANY = 0x1B  # DW_FORM_addrx: an index into .debug_addr


@dataclass
class Sections:
    """The DWARF sections of one file, decompressed ("" when absent), and
    the budget of the file they came from (decoding units spends from it)."""

    info: bytes = b""
    abbrev: bytes = b""
    line: bytes = b""
    str: bytes = b""
    line_str: bytes = b""
    str_offsets: bytes = b""
    addr: bytes = b""
    ranges: bytes = b""
    rnglists: bytes = b""
    aranges: bytes = b""
    budget: Budget = field(default_factory=Budget, compare=False, repr=False)


SECTION_NAMES = {
    f".debug_{name}": name for name in Sections.__dataclass_fields__ if name != "budget"
}


@dataclass
class Unit:
    offset: int
    end: int
    version: int
    addr_size: int
    offset_size: int
    die_start: int
    abbrevs: dict[int, Abbrev]
    top: Attrs = field(default_factory=dict)
    top_tag: int = 0
    top_children: bool = False
    after_top: int = 0  # offset of the DIE after the top one
    str_base: int = 0
    addr_base: int = 0
    rnglists_base: int = 0
    base: int = 0  # the unit's base address (its DW_AT_low_pc) for range lists
    comp_dir: str = ""


def unit_offsets(info: bytes, budget: Budget | None = None) -> list[int]:
    """Offsets of every unit header in .debug_info (hopping by unit_length),
    each an entry of `budget` (a hostile .debug_info can be all tiny units)."""
    offsets: list[int] = []
    pos = 0
    budget = budget or Budget()
    while pos + 11 <= len(info):
        if len(offsets) % CHECK_EVERY == CHECK_EVERY - 1:
            budget.take_entries(CHECK_EVERY, ".debug_info units")
        length, size = unsigned(info, pos, 4), 4
        if length == 0xFFFFFFFF:
            length, size = unsigned(info, pos + 4, 8), 12
        if length == 0:
            break
        offsets.append(pos)
        pos += size + length
    return offsets


def read_unit(s: Sections, offset: int, abbrev_cache: dict[int, dict[int, Abbrev]]) -> Unit | None:
    """The unit at `offset` with its top DIE read; None for a type unit."""
    data, pos = s.info, offset
    length, offset_size = unsigned(data, pos, 4), 4
    pos += 4
    if length == 0xFFFFFFFF:
        length, offset_size = unsigned(data, pos, 8), 8
        pos += 8
    end = min(pos + length, len(data))
    version = unsigned(data, pos, 2)
    pos += 2
    if not 2 <= version <= 5:
        raise DwarfError(f"unit at 0x{offset:x}: version {version} is not supported")
    if version >= 5:
        unit_type, addr_size = data[pos], data[pos + 1]
        abbrev_off = unsigned(data, pos + 2, offset_size)
        pos += 2 + offset_size
        if unit_type in _TYPE_UNITS:
            return None
        if unit_type in (4, 5):  # skeleton, split_compile: dwo_id
            pos += 8
    else:
        abbrev_off = unsigned(data, pos, offset_size)
        addr_size = data[pos + offset_size]
        pos += offset_size + 1
    if addr_size not in (4, 8):
        raise DwarfError(f"unit at 0x{offset:x}: address size {addr_size}")
    key = abbrev_off * 16 + addr_size + offset_size  # sizes change fixed-size totals
    if key not in abbrev_cache:
        abbrev_cache[key] = parse_abbrevs(s.abbrev, abbrev_off, addr_size, offset_size)
    unit = Unit(offset, end, version, addr_size, offset_size, pos, abbrev_cache[key])
    _read_top(s, unit)
    return unit


def _read_top(s: Sections, u: Unit) -> None:
    code, pos = uleb(s.info, u.die_start)
    ab = u.abbrevs.get(code)
    if ab is None:
        raise DwarfError(f"unit at 0x{u.offset:x}: unknown abbreviation {code}")
    u.top, u.after_top = read_attrs(s.info, pos, ab, u)
    u.top_tag, u.top_children = ab.tag, ab.children
    if AT_STR_OFFSETS_BASE in u.top:
        u.str_base = _int(u.top[AT_STR_OFFSETS_BASE][1])
    elif u.version >= 5:
        u.str_base = 8 if u.offset_size == 4 else 16  # past the contribution header
    base = u.top.get(AT_ADDR_BASE) or u.top.get(AT_GNU_ADDR_BASE)
    u.addr_base = _int(base[1]) if base else 0
    if AT_RNGLISTS_BASE in u.top:
        u.rnglists_base = _int(u.top[AT_RNGLISTS_BASE][1])
    if AT_LOW_PC in u.top:
        u.base = address(s, u, *u.top[AT_LOW_PC])
    if AT_COMP_DIR in u.top:
        u.comp_dir = string(s, u, *u.top[AT_COMP_DIR])


def read_attrs(data: bytes, pos: int, ab: Abbrev, u: Unit) -> tuple[Attrs, int]:
    attrs: Attrs = {}
    for attr, form, const in ab.attrs:
        value, pos = read_form(data, pos, form, const, u.addr_size, u.offset_size)
        attrs[attr] = (form, value)
    return attrs, pos


def _int(value: int | bytes) -> int:
    return value if isinstance(value, int) else 0


def address(s: Sections, u: Unit, form: int, value: int | bytes) -> int:
    if form in ADDRX_FORMS:
        return unsigned(s.addr, u.addr_base + _int(value) * u.addr_size, u.addr_size)
    return _int(value)


def string(s: Sections, u: Unit, form: int, value: int | bytes) -> str:
    """A string attribute's text; "" for forms naming another file (dwz)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if form in STRX_FORMS:
        value = unsigned(s.str_offsets, u.str_base + value * u.offset_size, u.offset_size)
        form = FORM_STRP
    if form == FORM_STRP:
        return cstring(s.str, value)[0].decode("utf-8", "replace")
    if form == FORM_LINE_STRP:
        return cstring(s.line_str, value)[0].decode("utf-8", "replace")
    return ""


def reference(u: Unit, form: int, value: int | bytes) -> int | None:
    """The .debug_info offset a reference names (None: another file)."""
    if form in CU_REF_FORMS:
        return u.offset + _int(value)
    if form == FORM_REF_ADDR:
        return _int(value)
    return None


def pc_ranges(s: Sections, u: Unit, attrs: Attrs) -> list[tuple[int, int]]:
    """The [low, high) address ranges of a DIE, without empty or discarded ones."""
    if AT_RANGES in attrs:
        form, value = attrs[AT_RANGES]
        if u.version >= 5:
            found = _rnglist(s, u, form, _int(value))
        else:
            found = _ranges_v4(s, u, _int(value))
    elif AT_LOW_PC in attrs and AT_HIGH_PC in attrs:
        low = address(s, u, *attrs[AT_LOW_PC])
        hform, hvalue = attrs[AT_HIGH_PC]
        high = low + _int(hvalue) if hform in CONSTANT_FORMS else address(s, u, hform, hvalue)
        found = [(low, high)]
    else:
        return []
    return [(lo, hi) for lo, hi in found if hi > lo and not discarded(lo)]


def discarded(address: int) -> bool:
    """An address the linker gave to code it dropped: 0 or a tombstone (-1, -2)."""
    return address in (0, 0xFFFFFFFF, 0xFFFFFFFE) or address >= 0xFFFFFFFFFFFFFFFE


def _ranges_v4(s: Sections, u: Unit, pos: int) -> list[tuple[int, int]]:
    size, data, base = u.addr_size, s.ranges, u.base
    top = (1 << (8 * size)) - 1
    out: list[tuple[int, int]] = []
    for _ in range(_MAX_RANGES):
        begin, end = unsigned(data, pos, size), unsigned(data, pos + size, size)
        pos += 2 * size
        if begin == 0 and end == 0:
            break
        if begin == top:
            base = end
        else:
            out.append((base + begin, base + end))
    return out


def _rnglist(s: Sections, u: Unit, form: int, value: int) -> list[tuple[int, int]]:
    data = s.rnglists
    pos = value
    if form == FORM_RNGLISTX:
        at = u.rnglists_base + value * u.offset_size
        pos = u.rnglists_base + unsigned(data, at, u.offset_size)
    base, size = u.base, u.addr_size
    out: list[tuple[int, int]] = []
    for _ in range(_MAX_RANGES):
        kind = data[pos]
        pos += 1
        if kind == 0:  # end_of_list
            break
        if kind in (1, 5):  # base_addressx, base_address
            if kind == 1:
                idx, pos = uleb(data, pos)
                base = address(s, u, ADDRX_FORMS_ANY, idx)
            else:
                base, pos = unsigned(data, pos, size), pos + size
            continue
        a, b, pos = _rle_pair(s, u, data, pos, kind, base)
        out.append((a, b))
    return out


def _rle_pair(
    s: Sections, u: Unit, data: bytes, pos: int, kind: int, base: int
) -> tuple[int, int, int]:
    """One bounded range list entry: (start, end, next position)."""
    size = u.addr_size
    if kind == 2:  # startx_endx
        i, pos = uleb(data, pos)
        j, pos = uleb(data, pos)
        return address(s, u, ADDRX_FORMS_ANY, i), address(s, u, ADDRX_FORMS_ANY, j), pos
    if kind == 3:  # startx_length
        i, pos = uleb(data, pos)
        n, pos = uleb(data, pos)
        start = address(s, u, ADDRX_FORMS_ANY, i)
        return start, start + n, pos
    if kind == 4:  # offset_pair
        a, pos = uleb(data, pos)
        b, pos = uleb(data, pos)
        return base + a, base + b, pos
    if kind == 6:  # start_end
        return unsigned(data, pos, size), unsigned(data, pos + size, size), pos + 2 * size
    if kind == 7:  # start_length
        start = unsigned(data, pos, size)
        n, pos = uleb(data, pos + size)
        return start, start + n, pos
    raise DwarfError(f"unknown range list entry kind {kind}")


def stmt_list(u: Unit) -> int | None:
    entry = u.top.get(AT_STMT_LIST)
    return _int(entry[1]) if entry else None
