"""Addresses to source frames from DWARF: file:line and the inline chain.

Lazily, per compile unit: the first lookup builds an index of which unit
covers which addresses (.debug_aranges, plus the top DIE's ranges of any
unit aranges leaves out, as clang's output often does); a lookup then
decodes only its unit's line program and DIE tree, once. Nothing is
parsed for units no address falls into, so one address in libc does not
decode libc's whole DWARF.

The inline chain follows llvm-symbolizer: the innermost DW_TAG_subprogram
or DW_TAG_inlined_subroutine whose ranges hold the address, then its
enclosing inlined subroutines up to the first subprogram. The innermost
frame's file:line is the line table's; each outer frame's is the
DW_AT_call_file/call_line of the frame it inlined. A frame's name is the
linkage (mangled) name found on the DIE or through its abstract_origin /
specification chain, else its plain name.

A unit that fails to decode (truncated, corrupt, hostile) becomes an
empty one, reported once through `warn`; the rest of the file still works.
The file's budget (carried by its Sections) pays for the unit index's
entries, and bounds the time of each unit's decoding (its clock restarts
per unit); a file over its budget reports it through `over_budget`, once,
and gives no more source lines.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from symbolizer.budget import CHECK_EVERY, Budget, BudgetExceeded
from symbolizer.dwarf_forms import (
    AT_ABSTRACT_ORIGIN,
    AT_CALL_COLUMN,
    AT_CALL_FILE,
    AT_CALL_LINE,
    AT_DECL_LINE,
    AT_LINKAGE_NAME,
    AT_MIPS_LINKAGE_NAME,
    AT_NAME,
    AT_SPECIFICATION,
    TAG_INLINED_SUBROUTINE,
    TAG_SUBPROGRAM,
    Abbrev,
    DwarfError,
    skip_form,
    uleb,
    unsigned,
)
from symbolizer.dwarf_line import LineTable, parse_line_table
from symbolizer.dwarf_units import (
    Attrs,
    Sections,
    Unit,
    pc_ranges,
    read_attrs,
    read_unit,
    reference,
    stmt_list,
    string,
    unit_offsets,
)

_SCOPES = (TAG_SUBPROGRAM, TAG_INLINED_SUBROUTINE)
_MAX_ORIGIN_HOPS = 8
_MAX_DEPTH = 4096  # DIE nesting; deeper is hostile
_MEMO_SIZE = 1 << 16  # answers kept per file


@dataclass(frozen=True)
class SourceFrame:
    """One frame of an inline chain: function (mangled if it has a linkage
    name; "" if DWARF names none), file, line, column, and the line where
    the function is declared (pprof's start_line)."""

    function: str
    file: str
    line: int
    column: int = 0
    decl_line: int = 0


class UnitData:
    """A decoded unit: its line table and its scope tree, as plain lists
    (so the on-disk cache can store it with marshal)."""

    def __init__(self, line: LineTable | None = None) -> None:
        self.line = line or LineTable([], [], [], [], [])
        self.names: list[str] = []
        self.decl: list[int] = []
        self.calls: list[tuple[int, int, int]] = []  # (file, line, column) of the call
        self.subprogram: list[bool] = []
        self.ranges: list[list[tuple[int, int]]] = []
        self.children: list[list[int]] = []
        self.tops: list[tuple[int, int, int]] = []  # (low, high, node), sorted
        self._top_lows: list[int] = []
        self._spans: dict[int, list[tuple[int, int, int]]] = {}

    def add(self, parent: int, ranges: list[tuple[int, int]], is_sub: bool) -> int:
        node = len(self.names)
        self.names.append("")
        self.decl.append(0)
        self.calls.append((0, 0, 0))
        self.subprogram.append(is_sub)
        self.ranges.append(ranges)
        self.children.append([])
        if parent >= 0:
            self.children[parent].append(node)
        else:
            self.tops.extend((lo, hi, node) for lo, hi in ranges)
        return node

    def seal(self) -> None:
        self.tops.sort()
        self._top_lows = [t[0] for t in self.tops]

    def frames(self, vaddr: int) -> tuple[SourceFrame, ...]:
        row = self.line.lookup(vaddr)
        chain = self._chain(vaddr)
        if not chain:
            return (SourceFrame("", *row),) if row else ()
        file, line, col = row or ("", 0, 0)
        out = []
        for node in chain:
            out.append(SourceFrame(self.names[node], file, line, col, self.decl[node]))
            cfile, line, col = self.calls[node]
            file = self.line.path(cfile)
        return tuple(out)

    def _chain(self, vaddr: int) -> list[int]:
        """Scope nodes holding vaddr, innermost first, up to the first subprogram."""
        i = bisect_right(self._top_lows, vaddr) - 1
        node = -1
        for j in range(i, max(-1, i - 16), -1):
            lo, hi, n = self.tops[j]
            if lo <= vaddr < hi:
                node = n
                break
        if node < 0:
            return []
        path = [node]
        while self.children[node]:
            inner = self._inner(node, vaddr)
            if inner < 0:
                break
            node = inner
            path.append(node)
        chain = []
        for n in reversed(path):
            chain.append(n)
            if self.subprogram[n]:
                break
        return chain

    def _inner(self, node: int, vaddr: int) -> int:
        """The child of `node` holding vaddr: a scan for few children, else a
        bisect over their sorted ranges (built on first use)."""
        kids = self.children[node]
        if len(kids) <= 8:
            return next((c for c in kids if _holds(self.ranges[c], vaddr)), -1)
        spans = self._spans.get(node)
        if spans is None:
            spans = sorted((lo, hi, c) for c in kids for lo, hi in self.ranges[c])
            self._spans[node] = spans
        i = bisect_right(spans, (vaddr, 1 << 64)) - 1
        for j in range(i, max(-1, i - 8), -1):
            lo, hi, c = spans[j]
            if lo <= vaddr < hi:
                return c
        return -1

    def to_plain(self) -> tuple[Any, ...]:
        ln = self.line
        return (
            (ln.addrs, ln.files, ln.lines, ln.cols, ln.paths),
            self.names, self.decl, self.calls, self.subprogram, self.ranges, self.children,
            self.tops,
        )  # fmt: skip

    @classmethod
    def from_plain(cls, plain: tuple[Any, ...]) -> UnitData:
        u = cls(LineTable(*[list(x) for x in plain[0]]))
        u.names, u.decl, u.calls, u.subprogram, u.ranges, u.children, u.tops = plain[1:]
        u.seal()
        return u


def _holds(ranges: list[tuple[int, int]], vaddr: int) -> bool:
    return any(lo <= vaddr < hi for lo, hi in ranges)


class DwarfInfo:
    """DWARF of one file, decoded unit by unit as addresses need them.

    `load` returns the sections; it is called at the first lookup that
    needs them (never, if an on-disk cache answered everything).
    """

    def __init__(
        self,
        load: Callable[[], Sections],
        warn: Callable[[str], None] = lambda _: None,
        state: tuple[Any, ...] | None = None,
    ) -> None:
        self._load, self._warn = load, warn
        self._s: Sections | None = None
        self._broken = False
        self.over_budget = ""  # what ran out, once the file's budget did
        self._index: list[tuple[int, int, int]] | None = None
        self._index_lows: list[int] = []
        self._decoded: dict[int, UnitData] = {}
        self._units: dict[int, Unit | None] = {}
        self._abbrevs: dict[int, dict[int, Abbrev]] = {}
        self._unit_starts: list[int] = []
        self._names: dict[int, tuple[str, str, int]] = {}
        self._memo: dict[int, tuple[SourceFrame, ...]] = {}
        self.new_units = 0  # decoded since the last export (for the disk cache)
        if state is not None:
            self._import(state)

    def frames(self, vaddr: int) -> tuple[SourceFrame, ...]:
        """Innermost first; () when no unit covers vaddr or DWARF is unusable."""
        found = self._memo.get(vaddr)
        if found is None:
            found = self._frames(vaddr)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()  # cheap bound; hot addresses come back at once
            self._memo[vaddr] = found
        return found

    def _frames(self, vaddr: int) -> tuple[SourceFrame, ...]:
        if self.over_budget:
            return ()
        cu = self._unit_for(vaddr)
        if cu is None:
            return ()
        data = self._decoded.get(cu)
        if data is None:
            data = self._decode_guarded(cu)
        return data.frames(vaddr)

    # -- the unit index --------------------------------------------------

    def _sections(self) -> Sections | None:
        if self._s is None and not self._broken:
            try:
                self._s = self._load()
                self._unit_starts = unit_offsets(self._s.info, self._s.budget)
            except Exception as exc:
                self._broken = True
                self._failed("unreadable DWARF", exc)
        return self._s

    def _unit_for(self, vaddr: int) -> int | None:
        if self._index is None:
            self._build_index()
        assert self._index is not None
        i = bisect_right(self._index_lows, vaddr) - 1
        for j in range(i, max(-1, i - 16), -1):
            lo, hi, cu = self._index[j]
            if lo <= vaddr < hi:
                return cu
        return None

    def _build_index(self) -> None:
        index: list[tuple[int, int, int]] = []
        s = self._sections()
        if s is not None:
            try:
                s.budget.restart_clock()
                index = _aranges(s.aranges, s.budget)
                covered = {cu for _, _, cu in index}
                for i, off in enumerate(self._unit_starts):
                    if off not in covered:
                        unit = self._unit(off)
                        if unit is not None:
                            index.extend((lo, hi, off) for lo, hi in pc_ranges(s, unit, unit.top))
                    if i % 256 == 255:
                        s.budget.take_entries(256, "DWARF units")
            except Exception as exc:
                index = [] if isinstance(exc, BudgetExceeded) else index
                self._failed("bad DWARF unit index", exc)
        self._set_index(index)

    def _set_index(self, index: list[tuple[int, int, int]]) -> None:
        self._index = sorted(index)
        self._index_lows = [r[0] for r in self._index]

    def _unit(self, offset: int) -> Unit | None:
        if offset not in self._units:
            assert self._s is not None
            self._units[offset] = read_unit(self._s, offset, self._abbrevs)
        return self._units[offset]

    # -- decoding one unit -----------------------------------------------

    def _failed(self, what: str, exc: Exception) -> None:
        if isinstance(exc, BudgetExceeded):
            self.over_budget = str(exc)
        self._warn(f"{what}: {type(exc).__name__}: {exc}")

    def _decode_guarded(self, cu: int) -> UnitData:
        try:
            data = self._decode(cu)
        except Exception as exc:
            self._failed(f"bad DWARF in the unit at 0x{cu:x}", exc)
            data = UnitData()
            data.seal()
        self._decoded[cu] = data
        self.new_units += 1
        return data

    def _decode(self, cu: int) -> UnitData:
        s = self._sections()
        unit = self._unit(cu) if s is not None else None
        if s is None or unit is None:
            return UnitData()
        s.budget.restart_clock()
        line = None
        offset = stmt_list(unit)
        if offset is not None and offset < len(s.line):
            line = parse_line_table(
                s.line, offset, unit.comp_dir, unit.addr_size,
                lambda form, value: string(s, unit, form, value), s.budget,
            )  # fmt: skip
        data = UnitData(line)
        if unit.top_children:
            self._walk(s, unit, data)
        data.seal()
        return data

    def _walk(self, s: Sections, u: Unit, data: UnitData) -> None:
        """Every DIE of the unit; scope DIEs with code become nodes, the rest are skipped."""
        info, pos, end, abbrevs = s.info, u.after_top, u.end, u.abbrevs
        addr_size, offset_size = u.addr_size, u.offset_size
        stack = [-1]
        dies = 0
        while stack and pos < end:
            dies += 1
            if dies % CHECK_EVERY == 0:
                s.budget.check_time("DWARF DIEs")
            die = pos
            code, pos = uleb(info, pos)
            if code == 0:
                stack.pop()
                continue
            ab = abbrevs.get(code)
            if ab is None:
                raise DwarfError(f"DIE at 0x{die:x}: unknown abbreviation {code}")
            parent = stack[-1]
            if ab.tag in _SCOPES:
                attrs, pos = read_attrs(info, pos, ab, u)
                ranges = pc_ranges(s, u, attrs)
                if ranges:
                    parent = self._node(s, u, data, parent, ranges, ab.tag, attrs, die)
            elif ab.fixed is not None:
                pos += ab.fixed
            else:
                for _, form, _ in ab.attrs:
                    pos = skip_form(info, pos, form, addr_size, offset_size)
            if ab.children:
                stack.append(parent)
                if len(stack) > _MAX_DEPTH:
                    raise DwarfError("DIEs nested too deep")

    def _node(
        self, s: Sections, u: Unit, data: UnitData, parent: int,
        ranges: list[tuple[int, int]], tag: int, attrs: Attrs, die: int,
    ) -> int:  # fmt: skip
        node = data.add(parent, ranges, tag == TAG_SUBPROGRAM)
        linkage, name, decl = self._name(die)
        data.names[node] = linkage or name
        data.decl[node] = decl
        if tag == TAG_INLINED_SUBROUTINE:
            data.calls[node] = (
                _num(attrs, AT_CALL_FILE),
                _num(attrs, AT_CALL_LINE),
                _num(attrs, AT_CALL_COLUMN),
            )
        return node

    # -- names -----------------------------------------------------------

    def _name(self, die: int, hops: int = 0) -> tuple[str, str, int]:
        """(linkage name, name, decl line) of a DIE, through origins/specifications."""
        found = self._names.get(die)
        if found is not None:
            return found
        assert self._s is not None
        u = self._unit_containing(die)
        code, pos = uleb(self._s.info, die)
        ab = u.abbrevs.get(code) if u else None
        if u is None or ab is None:
            return ("", "", 0)
        attrs, _ = read_attrs(self._s.info, pos, ab, u)
        link = attrs.get(AT_LINKAGE_NAME) or attrs.get(AT_MIPS_LINKAGE_NAME)
        linkage = string(self._s, u, *link) if link else ""
        name = string(self._s, u, *attrs[AT_NAME]) if AT_NAME in attrs else ""
        decl = _num(attrs, AT_DECL_LINE)
        for attr in (AT_ABSTRACT_ORIGIN, AT_SPECIFICATION):
            ref = reference(u, *attrs[attr]) if attr in attrs else None
            if ref is not None and ref != die and hops < _MAX_ORIGIN_HOPS:
                olink, oname, odecl = self._name(ref, hops + 1)
                linkage, name, decl = linkage or olink, name or oname, decl or odecl
        self._names[die] = (linkage, name, decl)
        return linkage, name, decl

    def _unit_containing(self, die: int) -> Unit | None:
        i = bisect_right(self._unit_starts, die) - 1
        return self._unit(self._unit_starts[i]) if i >= 0 else None

    # -- the on-disk cache -----------------------------------------------

    def export(self) -> tuple[Any, ...]:
        """Plain data: the unit index and every unit decoded so far."""
        if self._index is None:
            self._build_index()
        self.new_units = 0
        return (self._index, {cu: d.to_plain() for cu, d in self._decoded.items()})

    def _import(self, state: tuple[Any, ...]) -> None:
        index, units = state
        self._set_index([tuple(r) for r in index])
        self._decoded = {cu: UnitData.from_plain(p) for cu, p in units.items()}


def _num(attrs: Attrs, attr: int) -> int:
    entry = attrs.get(attr)
    return entry[1] if entry and isinstance(entry[1], int) else 0


def _aranges(data: bytes, budget: Budget) -> list[tuple[int, int, int]]:
    """(low, high, unit offset) of every .debug_aranges tuple, each paid for."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 12 <= len(data):
        length, offset_size = unsigned(data, pos, 4), 4
        start = pos
        pos += 4
        if length == 0xFFFFFFFF:
            length, offset_size = unsigned(data, pos, 8), 8
            pos += 8
        end = pos + length
        cu = unsigned(data, pos + 2, offset_size)
        addr_size = data[pos + 2 + offset_size]
        if addr_size not in (4, 8) or end > len(data):
            raise DwarfError("malformed .debug_aranges")
        pos += 2 + offset_size + 2
        pos += -(pos - start) % (2 * addr_size)  # tuples are aligned to twice their size
        while pos + 2 * addr_size <= end:
            lo, n = unsigned(data, pos, addr_size), unsigned(data, pos + addr_size, addr_size)
            pos += 2 * addr_size
            if lo == 0 and n == 0:
                break
            if n and lo:
                out.append((lo, lo + n, cu))
                if len(out) % CHECK_EVERY == 0:
                    budget.take_entries(CHECK_EVERY, ".debug_aranges")
        pos = end
    return out
