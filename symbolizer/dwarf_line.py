"""DWARF .debug_line: one compile unit's line program, versions 2 to 5.

The state machine runs over the raw bytes in one function with its
registers in locals: pyelftools builds an object per row, 14-16 times
slower on libc's units (`bench/run.py symbolizer`, docs/performance.md),
and a big library has hundreds of thousands of rows.

File names follow llvm-symbolizer's rules, so paths compare equal:
a relative name is prefixed with its include directory, and that with
the compilation directory unless it is absolute (in DWARF 5, directory 0
*is* the compilation directory; in DWARF 2-4, directory 0 means it and
file 0 does not exist). Paths are joined, not normalised ("..") .

Rows are kept per sequence, sequences sorted by start (addresses within
a sequence only grow, by construction of the opcodes: a corrupt table can
give wrong lines, never an error or a hang); a sequence that
starts at address 0 or at a tombstone (-1, -2) describes code the linker
discarded, and is dropped. Lookup returns the last row at or below the
address in its sequence, as llvm-symbolizer does.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from symbolizer.budget import CHECK_EVERY, Budget
from symbolizer.dwarf_forms import (
    FORM_LINE_STRP,
    FORM_STRING,
    FORM_STRP,
    STRX_FORMS,
    DwarfError,
    cstring,
    read_form,
    sleb,
    uleb,
    unsigned,
)

_LNCT_PATH, _LNCT_DIRECTORY_INDEX = 1, 2
MAX_ROWS = 2_000_000  # per unit, counted as rows are made: lists cannot grow forever
MAX_FILES = 1 << 17  # directories or files of one unit's table

StringAt = Callable[[int, int], str]  # (form, value) -> the string it names


@dataclass
class LineTable:
    """Rows of one unit: parallel lists; `lines[i] < 0` ends a sequence."""

    addrs: list[int]
    files: list[int]
    lines: list[int]
    cols: list[int]
    paths: list[str]  # file index → path

    def lookup(self, address: int) -> tuple[str, int, int] | None:
        """(path, line, column) of the row covering `address`, if any."""
        i = bisect_right(self.addrs, address) - 1
        if i < 0 or self.lines[i] < 0:
            return None
        return self.path(self.files[i]), self.lines[i], self.cols[i]

    def path(self, index: int) -> str:
        return self.paths[index] if 0 <= index < len(self.paths) else ""


@dataclass
class _Header:
    version: int
    offset_size: int
    addr_size: int
    min_inst: int
    default_is_stmt: int
    line_base: int
    line_range: int
    opcode_base: int
    std_lengths: bytes
    program: int  # offset of the first opcode
    end: int  # offset after the unit


def parse_line_table(
    data: bytes,
    offset: int,
    comp_dir: str,
    cu_addr_size: int,
    string_at: StringAt,
    budget: Budget | None = None,
) -> LineTable:
    """One unit's table; `budget`'s clock is checked every CHECK_EVERY rows."""
    h, dirs, names = _header(data, offset, cu_addr_size, string_at)
    paths = [_join(comp_dir, dirs, d, n, h.version) for n, d in names]
    table = LineTable([], [], [], [], paths)
    seqs = _run(data, h, budget or Budget())
    if any(seqs[i][0][0] > seqs[i + 1][0][0] for i in range(len(seqs) - 1)):
        seqs.sort(key=lambda s: s[0][0])
    for addrs, files, lines, cols in seqs:
        table.addrs += addrs
        table.files += files
        table.lines += lines
        table.cols += cols
    return table


def _header(
    data: bytes, pos: int, cu_addr_size: int, string_at: StringAt
) -> tuple[_Header, list[str], list[tuple[str, int]]]:
    length = unsigned(data, pos, 4)
    offset_size = 4
    pos += 4
    if length == 0xFFFFFFFF:
        length, offset_size = unsigned(data, pos, 8), 8
        pos += 8
    end = pos + length
    if end > len(data):
        raise DwarfError("line table runs past its section")
    version = unsigned(data, pos, 2)
    pos += 2
    if not 2 <= version <= 5:
        raise DwarfError(f"line table version {version} is not supported")
    addr_size = cu_addr_size
    if version >= 5:
        addr_size = data[pos]
        pos += 2  # address_size, segment_selector_size
    header_length = unsigned(data, pos, offset_size)
    pos += offset_size
    program = pos + header_length
    min_inst = data[pos]
    pos += 2 if version >= 4 else 1  # maximum_operations_per_instruction (VLIW) ignored
    default_is_stmt, line_base, line_range, opcode_base = data[pos : pos + 4]
    line_base = line_base - 256 if line_base > 127 else line_base
    pos += 4
    std_lengths = data[pos : pos + max(0, opcode_base - 1)]
    pos += max(0, opcode_base - 1)
    if line_range == 0:
        raise DwarfError("line table with line_range 0")
    h = _Header(
        version, offset_size, addr_size, min_inst, default_is_stmt, line_base, line_range,
        opcode_base, std_lengths, program, end,
    )  # fmt: skip
    if version >= 5:
        dir_entries, pos = _v5_entries(data, pos, h, string_at)
        file_entries, pos = _v5_entries(data, pos, h, string_at)
        return h, [e[0] for e in dir_entries], file_entries
    dirs, names = _v4_entries(data, pos)
    return h, dirs, names


def _v4_entries(data: bytes, pos: int) -> tuple[list[str], list[tuple[str, int]]]:
    """include_directories then file_names, each list ending in an empty string.
    File 0 does not exist before DWARF 5: a placeholder keeps indexes direct."""
    dirs: list[str] = []
    while data[pos]:
        raw, pos = cstring(data, pos)
        dirs.append(raw.decode("utf-8", "replace"))
    pos += 1
    names: list[tuple[str, int]] = [("", 0)]
    while data[pos]:
        raw, pos = cstring(data, pos)
        d, pos = uleb(data, pos)
        _, pos = uleb(data, pos)  # mtime
        _, pos = uleb(data, pos)  # length
        names.append((raw.decode("utf-8", "replace"), d))
        if len(names) > MAX_FILES:
            raise DwarfError("line table lists too many files")
    return dirs, names


def _v5_entries(
    data: bytes, pos: int, h: _Header, string_at: StringAt
) -> tuple[list[tuple[str, int]], int]:
    """A DWARF 5 directory or file table: a format (content type, form) list, then entries."""
    nformats = data[pos]
    pos += 1
    formats = []
    for _ in range(nformats):
        kind, pos = uleb(data, pos)
        form, pos = uleb(data, pos)
        formats.append((kind, form))
    count, pos = uleb(data, pos)
    if count > min(len(data) - pos, MAX_FILES):
        raise DwarfError("line table directory/file count exceeds its section")
    entries = []
    for _ in range(count):
        path, index = "", 0
        for kind, form in formats:
            value, pos = read_form(data, pos, form, 0, h.addr_size, h.offset_size)
            if kind == _LNCT_PATH:
                path = _string(form, value, string_at)
            elif kind == _LNCT_DIRECTORY_INDEX and isinstance(value, int):
                index = value
        entries.append((path, index))
    return entries, pos


def _string(form: int, value: int | bytes, string_at: StringAt) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace") if form == FORM_STRING else ""
    if form in (FORM_LINE_STRP, FORM_STRP) or form in STRX_FORMS:
        return string_at(form, value)
    return ""


def _join(comp_dir: str, dirs: list[str], index: int, name: str, version: int) -> str:
    if not name or name.startswith("/"):
        return name
    if version >= 5:
        include = dirs[index] if index < len(dirs) else ""
    else:
        include = dirs[index - 1] if 0 < index <= len(dirs) else ""
    parts = [include, name]
    if comp_dir and not include.startswith("/") and (version < 5 or index != 0):
        parts.insert(0, comp_dir)
    return "/".join(p.rstrip("/") for p in parts if p)


_Seq = tuple[list[int], list[int], list[int], list[int]]  # addrs, files, lines, columns


def _run(data: bytes, h: _Header, budget: Budget) -> list[_Seq]:
    """Execute the line program: the rows of each sequence (end rows have line -1)."""
    seqs: list[_Seq] = []
    addrs: list[int] = []
    files: list[int] = []
    lines: list[int] = []
    cols: list[int] = []
    pos, end = h.program, h.end
    opcode_base, line_base, line_range, min_inst = (
        h.opcode_base, h.line_base, h.line_range, h.min_inst,
    )  # fmt: skip
    std = h.std_lengths
    const_add = min_inst * ((255 - opcode_base) // line_range)
    addr, file, line, col = 0, 1, 1, 0
    total = 0
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            adj = op - opcode_base
            addr += min_inst * (adj // line_range)
            line += line_base + adj % line_range
        elif op == 0:  # extended
            length, pos = uleb(data, pos)
            sub, nxt = data[pos], pos + length
            pos = nxt
            if sub == 2:  # set_address
                addr = unsigned(data, nxt - length + 1, length - 1) if length in (3, 5, 9) else 0
                continue
            if sub != 1:
                continue
            # end_sequence
            addrs.append(addr)
            files.append(file)
            lines.append(-1)
            cols.append(0)
            total += 1
            if total % CHECK_EVERY == 0:
                _check_rows(total, budget)
            _keep(seqs, (addrs, files, lines, cols))
            addrs, files, lines, cols = [], [], [], []
            addr, file, line, col = 0, 1, 1, 0
            continue
        elif op == 1:  # copy
            pass
        elif op == 2:
            v, pos = uleb(data, pos)
            addr += v * min_inst
            continue
        elif op == 3:
            v, pos = sleb(data, pos)
            line += v
            continue
        elif op == 4:
            file, pos = uleb(data, pos)
            continue
        elif op == 5:
            col, pos = uleb(data, pos)
            continue
        elif op == 8:
            addr += const_add
            continue
        elif op == 9:
            addr += unsigned(data, pos, 2)
            pos += 2
            continue
        else:  # negate_stmt, basic_block, prologue/epilogue, isa, unknown: skip args
            for _ in range(std[op - 1] if op - 1 < len(std) else 0):
                _, pos = uleb(data, pos)
            continue
        # a special opcode or DW_LNS_copy appends a row
        addrs.append(addr)
        files.append(file)
        lines.append(line)
        cols.append(col)
        total += 1
        if total % CHECK_EVERY == 0:
            _check_rows(total, budget)
    return seqs


def _check_rows(total: int, budget: Budget) -> None:
    if total > MAX_ROWS:
        raise DwarfError(f"line table has more than {MAX_ROWS} rows")
    budget.check_time("line table")


def _keep(seqs: list[_Seq], seq: _Seq) -> None:
    addrs = seq[0]
    start = addrs[0]
    if start in (0, 0xFFFFFFFF, 0xFFFFFFFE) or start >= 0xFFFFFFFFFFFFFFFE:
        return  # code the linker discarded
    seqs.append(seq)
