"""One binary's unwind table: built from its CFI once, cached on disk by build ID.

Building python3.11's table takes a fraction of a second; reading it back
from the cache takes milliseconds, so a host pays the cost once per build
of a binary, not once per process or per agent start. Files without a build
ID are built every time (they are rare in distributions and cheap when small).

`.eh_frame` is what the loader and C++ exceptions use, so it is present in
nearly every binary; `.debug_frame` (same rules, other encoding) fills in
ranges `.eh_frame` lacks, for code built with -fno-asynchronous-unwind-tables -g.

Both are read through the symbolizer's `read_section` (an SHF_COMPRESSED
`.eh_frame` claiming 6 GB is refused before a byte is decompressed) and
paid for by one `Budget` per file: bytes, rows, time. A table the walker's
rows map could not hold anyway is not built: `unwind_budget` caps its rows
there. BudgetExceeded (an ElfError) is raised as it is, so the loader can
count it apart from corrupt CFI.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.safewrite import private_dir, write_atomic
from agent.unwind.ehframe import CfiError, Fde, parse_section
from agent.unwind.rows import ROW, Row, merge_rows, pack, unpack
from symbolizer.budget import Budget, BudgetExceeded, ElfError
from symbolizer.elffile import EM_X86_64, ElfFile, Segment
from symbolizer.sections import SectionError

log = logging.getLogger("bpfprof.unwind")

CACHE_MAGIC = b"BPFUNW01"
# libclang-cpp (1.0M rows) takes ~8 s to build here: 4x that, since a
# table is built once per build ID and then read from the disk cache
UNWIND_SECONDS = 30.0
UNWIND_ROWS = 1 << 20  # the default --unwind-rows: a bigger table cannot be placed
_HEADER = struct.Struct("<8sQI")  # magic, base, row count


class TableError(Exception):
    """The binary's CFI cannot be turned into a table (corrupt, too large)."""


@dataclass(frozen=True)
class UnwindTable:
    """Rows of one binary; `data` packs them relative to `base` (an ELF vaddr)."""

    build_id: str
    base: int
    data: bytes

    @property
    def count(self) -> int:
        return len(self.data) // ROW.size

    def rows(self) -> list[Row]:
        return unpack(self.data, self.base)


@dataclass(frozen=True)
class ElfUnwindInfo:
    """What loading a binary into the walker needs: its table and segments."""

    table: UnwindTable
    segments: tuple[Segment, ...]

    def load_bias(self, map_start: int, map_offset: int) -> int | None:
        """Runtime address minus ELF vaddr for a mapping of this file.

        The PT_LOAD holding the mapping's file offset pairs a file byte with
        its link-time address (the mapping itself starts page-aligned below).
        """
        for seg in self.segments:
            if seg.offset <= map_offset < seg.offset + max(seg.filesz, 1):
                return map_start - (map_offset - seg.offset + seg.vaddr)
        return None


def unwind_budget(max_rows: int = UNWIND_ROWS) -> Budget:
    """The budget of one binary's table: rows the map could hold, 30 s."""
    return Budget(max_entries=max_rows, max_seconds=UNWIND_SECONDS)


def table_from_fdes(build_id: str, fdes: list[Fde], budget: Budget | None = None) -> UnwindTable:
    rows = merge_rows(fdes, budget)
    if not rows:
        return UnwindTable(build_id, 0, b"")
    base = rows[0].address
    if rows[-1].address - base >= 1 << 32:
        raise TableError("code spans more than 4 GiB: row addresses do not fit 32 bits")
    return UnwindTable(build_id, base, pack(rows, base))


def build_table(elf: ElfFile, build_id: str, budget: Budget | None = None) -> UnwindTable:
    """The table of an opened ELF file (x86-64, little-endian).

    Its sections are read with `budget` (unwind_budget() if None), not the
    file's own: raises TableError, or BudgetExceeded past it."""
    if elf.machine != EM_X86_64:
        raise TableError(f"unwinding supports x86-64 only, not e_machine {elf.machine}")
    budget = budget or unwind_budget()
    fdes: list[Fde] = []
    try:
        eh = elf.section(".eh_frame")
        if eh is not None and eh.header.type != "SHT_NOBITS":
            data = elf.read(eh, budget)
            fdes = parse_section(data, eh.header.addr, is_eh_frame=True, budget=budget)
        debug = elf.section(".debug_frame")
        if debug is not None and debug.header.type != "SHT_NOBITS":
            data = elf.read(debug, budget)
            extra = parse_section(data, 0, is_eh_frame=False, budget=budget)
            fdes.extend(_uncovered(fdes, extra))
    except (CfiError, SectionError, IndexError, ValueError, struct.error) as exc:
        raise TableError(f"bad CFI: {exc}") from exc
    return table_from_fdes(build_id, fdes, budget)


def _uncovered(have: list[Fde], extra: list[Fde]) -> list[Fde]:
    """The FDEs of `extra` whose start no FDE of `have` covers."""
    spans = sorted((f.pc_begin, f.pc_end) for f in have)
    starts = [s for s, _ in spans]
    out = []
    for fde in extra:
        i = bisect_right(starts, fde.pc_begin) - 1
        if i < 0 or spans[i][1] <= fde.pc_begin:
            out.append(fde)
    return out


class TableCache:
    """Unwind tables on disk, one file per build ID, under `directory`.

    The walker follows these rows blindly, so a file planted by another user
    could make it report wrong stacks: as with the symbol cache, the
    directory is created 0700 and a file is read only if it and its
    directory belong to us and are not writable by others. A bad or foreign
    file is ignored and replaced."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path(self, build_id: str) -> Path | None:
        if self.directory is None or not _valid_build_id(build_id):
            return None
        return self.directory / f"{build_id}.unwind"

    def get(self, build_id: str) -> UnwindTable | None:
        path = self.path(build_id)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                if not (_trusted(os.fstat(f.fileno())) and _trusted(os.stat(path.parent))):
                    return None
                blob = f.read()
        except OSError:
            return None
        return decode_cached(build_id, blob)

    def put(self, table: UnwindTable) -> None:
        """Write atomically (rename), so a concurrent reader sees all or nothing."""
        path = self.path(table.build_id)
        if path is None:
            return
        try:
            private_dir(path.parent)  # 0700, ours, not a symlink nor shared
            write_atomic(path, encode_cached(table))  # 0600, O_EXCL|O_NOFOLLOW temporary
        except OSError as exc:
            log.debug("cannot cache the unwind table of %s: %s", table.build_id, exc)


def _valid_build_id(build_id: str) -> bool:
    return 4 <= len(build_id) <= 128 and all(c in "0123456789abcdef" for c in build_id)


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def encode_cached(table: UnwindTable) -> bytes:
    return _HEADER.pack(CACHE_MAGIC, table.base, table.count) + table.data


def decode_cached(build_id: str, blob: bytes) -> UnwindTable | None:
    """The table in a cache file; None if it is from another format or cut short."""
    if len(blob) < _HEADER.size:
        return None
    magic, base, count = _HEADER.unpack_from(blob)
    data = blob[_HEADER.size :]
    if magic != CACHE_MAGIC or len(data) != count * ROW.size:
        return None
    return UnwindTable(build_id, base, data)


def load_unwind_info(
    stream: IO[bytes], build_id: str, cache: TableCache, budget: Budget | None = None
) -> ElfUnwindInfo:
    """The table (from the cache when it has this build ID) and PT_LOADs of a file."""
    try:
        elf = ElfFile(stream, budget)
    except BudgetExceeded:
        raise
    except ElfError as exc:
        raise TableError(f"not a usable ELF file: {exc}") from exc
    segments = elf.segments()
    table = cache.get(build_id)
    if table is None:
        try:
            table = build_table(elf, build_id, budget)
        except (TableError, BudgetExceeded):
            raise
        except Exception as exc:  # a corrupt section header, as above
            raise TableError(f"cannot read the CFI sections: {exc}") from exc
        cache.put(table)
    return ElfUnwindInfo(table, segments)
