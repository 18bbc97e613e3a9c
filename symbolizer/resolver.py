"""The Symbolizer: process and kernel addresses to function names.

The one hub of the package: it wires the readers (procmaps, process,
kernel), the parsers (procmaps, elf, kernel) and the table cache, and is
the boundary where every failure is caught, counted and logged once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import IO

from symbolizer.cache import LruCache, build_id_key, file_key
from symbolizer.elf import ElfError, ElfSymbols, build_id_from_notes, load_elf, read_build_id
from symbolizer.kernel import KernelSymbols, read_kallsyms, read_kernel_notes
from symbolizer.process import (
    FileId,
    ProcessInfo,
    Snapshot,
    file_id,
    open_mapped_file,
    read_comm,
    read_exe,
)
from symbolizer.procmaps import MapEntry, parse_maps, read_maps
from symbolizer.stats import SymbolizerStats


def _start(entry: MapEntry) -> int:
    return entry.start


@dataclass(frozen=True)
class ResolvedFrame:
    """One address, resolved as far as possible.

    `function` is None when no symbol covers the address; `address` and
    `mapping` are still set then, so it can be symbolized later (offline,
    by build ID). `elf_vaddr` is the address in the file's own terms
    (what addr2line takes); `module` names a kernel module, "" otherwise.
    """

    address: int
    mapping: MapEntry | None = None
    build_id: str = ""
    function: str | None = None
    symbol_offset: int = 0
    elf_vaddr: int | None = None
    module: str = ""


class Symbolizer:
    """Resolves addresses of observed processes and of the kernel."""

    def __init__(
        self,
        proc_root: str = "/proc",
        kallsyms_path: str = "/proc/kallsyms",
        notes_path: str = "/sys/kernel/notes",
        cache_size: int = 512,
        max_snapshots: int = 8,
    ) -> None:
        self.proc_root = proc_root
        self.kallsyms_path = kallsyms_path
        self.notes_path = notes_path
        self.max_snapshots = max_snapshots
        self.stats = SymbolizerStats()
        self._procs: dict[int, ProcessInfo] = {}
        self._tables: LruCache[ElfSymbols] = LruCache(cache_size)
        self._bad_files: LruCache[str] = LruCache(cache_size)
        self._kernel: KernelSymbols | None = None
        self._kernel_build_id: str | None = None

    # -- processes -------------------------------------------------------

    def observe(self, pid: int) -> None:
        """Capture the maps of `pid` and load its executable mappings' tables.

        Call it when a pid is first seen and after it execs. A vanished or
        hidden pid is still recorded, so its addresses resolve to None
        without touching /proc again.
        """
        info = self._procs.setdefault(pid, ProcessInfo(pid))
        try:
            # sorted for bisect: the kernel sorts, a replayed or edited text may not
            maps = tuple(sorted(parse_maps(read_maps(pid, self.proc_root)), key=_start))
        except OSError as exc:
            self.stats.vanished_pids += 1
            self.stats.warn_once(f"pid:{pid}", f"cannot read maps of pid {pid}: {exc}")
            return
        self.stats.observed += 1
        info.exe = read_exe(pid, self.proc_root) or info.exe
        info.comm = read_comm(pid, self.proc_root) or info.comm
        if info.snapshots and info.snapshots[0].maps == maps:
            return
        info.add(Snapshot(maps, self._load_tables(pid, maps)), self.max_snapshots)

    def forget(self, pid: int) -> None:
        """Drop what is kept for `pid` (its tables stay cached for others)."""
        self._procs.pop(pid, None)

    def resolve_user(self, pid: int, address: int) -> ResolvedFrame:
        """Resolve exactly `address` (callers pass return addresses minus 1).

        A pid never observed is observed now, while it may still exist.
        """
        if pid not in self._procs:
            self.observe(pid)
        hit = self._procs[pid].find(address)
        if hit is None:
            return self._miss(ResolvedFrame(address))
        entry, table = hit
        if table is None:
            return self._miss(ResolvedFrame(address, entry))
        vaddr = table.file_offset_to_vaddr(entry.file_offset(address))
        sym = table.lookup(vaddr) if vaddr is not None else None
        if vaddr is None or sym is None:
            return self._miss(ResolvedFrame(address, entry, table.build_id, elf_vaddr=vaddr))
        self.stats.resolved += 1
        return ResolvedFrame(address, entry, table.build_id, sym.name, vaddr - sym.start, vaddr)

    def table_for(self, pid: int, address: int) -> ElfSymbols | None:
        """The (shared) symbol table behind `address` in `pid`, if loaded."""
        info = self._procs.get(pid)
        hit = info.find(address) if info else None
        return hit[1] if hit else None

    def process_name(self, pid: int) -> str:
        """Basename of the executable captured at observe(), else comm, else ""."""
        info = self._procs.get(pid) or ProcessInfo(
            pid, read_exe(pid, self.proc_root), read_comm(pid, self.proc_root)
        )
        return os.path.basename(info.exe) or info.comm

    def executable_path(self, pid: int) -> str:
        info = self._procs.get(pid)
        return info.exe if info else read_exe(pid, self.proc_root)

    # -- kernel ----------------------------------------------------------

    def kernel_symbols(self) -> KernelSymbols:
        """kallsyms, parsed on first use (an empty table if unreadable)."""
        if self._kernel is None:
            try:
                self._kernel = KernelSymbols.from_text(read_kallsyms(self.kallsyms_path))
            except OSError as exc:
                self.stats.warn_once("kallsyms", f"cannot read {self.kallsyms_path}: {exc}")
                self._kernel = KernelSymbols([])
            if not len(self._kernel):
                self.stats.kernel_unavailable += 1
                self.stats.warn_once("kallsyms-empty", "no kernel symbols: frames stay addresses")
        return self._kernel

    def kernel_build_id(self) -> str:
        """The running kernel's GNU build ID, "" if /sys/kernel/notes is unreadable."""
        if self._kernel_build_id is None:
            try:
                self._kernel_build_id = build_id_from_notes(read_kernel_notes(self.notes_path))
            except OSError as exc:
                self.stats.warn_once("kernel-notes", f"no kernel build ID: {exc}")
                self._kernel_build_id = ""
        return self._kernel_build_id

    def resolve_kernel(self, address: int) -> ResolvedFrame:
        """A kernel address; mapping None (the caller owns the kernel mapping)."""
        sym = self.kernel_symbols().lookup(address)
        if sym is None:
            return self._miss(ResolvedFrame(address))
        self.stats.resolved += 1
        return ResolvedFrame(address, None, "", sym.name, address - sym.start, module=sym.module)

    # -- internals -------------------------------------------------------

    def _miss(self, frame: ResolvedFrame) -> ResolvedFrame:
        self.stats.misses += 1
        return frame

    def _load_tables(self, pid: int, maps: tuple[MapEntry, ...]) -> dict[FileId, ElfSymbols]:
        tables: dict[FileId, ElfSymbols] = {}
        for entry in maps:
            if entry.is_exec and entry.is_file and file_id(entry) not in tables:
                table = self._table_for_mapping(pid, entry)
                if table is not None:
                    tables[file_id(entry)] = table
        return tables

    def _table_for_mapping(self, pid: int, entry: MapEntry) -> ElfSymbols | None:
        try:
            f = open_mapped_file(pid, entry, self.proc_root)
        except OSError as exc:
            self.stats.unreadable_files += 1
            self.stats.warn_once(f"open:{entry.path}", f"cannot open {entry.path}: {exc}")
            return None
        with f:
            return self._table_from_file(f, entry.path)

    def _table_from_file(self, f: IO[bytes], path: str) -> ElfSymbols | None:
        """The cached table for this file, by identity then build ID; else parse it.

        A file already found unusable is not read again (nor warned about).
        Only regular files are read: a device mapped executable could block.
        """
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            self.stats.unreadable_files += 1
            return None
        fkey = file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        table = self._tables.get(fkey)
        if table is None and self._bad_files.get(fkey) is None:
            try:
                table = self._load_by_build_id(f, fkey)
            except ElfError as exc:
                self._bad_files.put(fkey, str(exc))
                self.stats.bad_elf += 1
                self.stats.warn_once(f"elf:{fkey}", f"cannot symbolize {path}: {exc}")
        elif table is not None:
            self.stats.table_cache_hits += 1
        return table

    def _load_by_build_id(self, f: IO[bytes], fkey: str) -> ElfSymbols:
        build_id = read_build_id(f)
        table = self._tables.get(build_id_key(build_id)) if build_id else None
        if table is None:
            table = load_elf(f)
            self.stats.tables_loaded += 1
            if build_id:
                self._tables.put(build_id_key(build_id), table)
        else:
            self.stats.table_cache_hits += 1
        self._tables.put(fkey, table)
        return table
