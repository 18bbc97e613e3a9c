"""The Symbolizer: process and kernel addresses to function names.

The one hub of the package: it wires the readers (procmaps, process,
kernel), the parsers (procmaps, elf, kernel) and the table cache, and is
the boundary where every failure is caught, counted and logged once.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO, BinaryIO

from symbolizer.budget import BudgetExceeded
from symbolizer.cache import LruCache, build_id_key, file_key
from symbolizer.debuginfo import DebugSearch
from symbolizer.diskcache import SymbolCache
from symbolizer.dwarf import SourceFrame
from symbolizer.elf import ElfError, ElfSymbols, build_id_from_notes, read_build_id
from symbolizer.frames import ResolvedLine, source_lines
from symbolizer.kernel import (
    KernelSymbols,
    hidden_kallsyms_message,
    read_kallsyms,
    read_kernel_notes,
)
from symbolizer.objfile import load_object
from symbolizer.perfmap import PerfMapReader
from symbolizer.persist import restore_table, table_state
from symbolizer.places import Place
from symbolizer.process import (
    FileId,
    ProcessInfo,
    Snapshot,
    file_id,
    open_mapped,
    read_comm,
    read_exe,
)
from symbolizer.procmaps import MapEntry, parse_maps, read_maps
from symbolizer.safeopen import UnsafeFile, open_regular
from symbolizer.stats import SymbolizerStats

MAX_ELF_ANSWERS = 1 << 16  # bounds resolve_elf's memo
RECHECK_FILE_S = 1.0  # how long a stat'ed file is trusted unchanged

log = logging.getLogger("bpfprof.symbolizer")


def _gone(exc: OSError) -> bool:
    """Whether reading a process's /proc entry failed because it exited."""
    return isinstance(exc, FileNotFoundError | ProcessLookupError)


# Opens the file behind a process's mapping (process.open_mapped's contract).
Opener = Callable[[int, MapEntry], tuple[BinaryIO, Place]]


def _start(entry: MapEntry) -> int:
    return entry.start


@dataclass(frozen=True)
class ResolvedFrame:
    """One address, resolved as far as possible.

    `function` is None when no symbol covers the address; `address` and
    `mapping` are still set then, so it can be symbolized later (offline,
    by build ID). `elf_vaddr` is the address in the file's own terms
    (what addr2line takes); `module` names a kernel module, "" otherwise.
    `function` is demangled: the outermost function at the address.
    `lines` is the inline chain, innermost first, each with its file:line
    (the last one is `function` itself); one line without a file when
    there is no DWARF; empty when unsymbolized. `kind` is "native",
    "kernel" or "jit" (a perf map name).
    """

    address: int
    mapping: MapEntry | None = None
    build_id: str = ""
    function: str | None = None
    symbol_offset: int = 0
    elf_vaddr: int | None = None
    module: str = ""
    lines: tuple[ResolvedLine, ...] = ()
    kind: str = "native"


class Symbolizer:
    """Resolves addresses of observed processes and of the kernel."""

    def __init__(
        self,
        proc_root: str = "/proc",
        kallsyms_path: str = "/proc/kallsyms",
        notes_path: str = "/sys/kernel/notes",
        cache_size: int = 512,
        max_snapshots: int = 8,
        debug_search: DebugSearch | None = None,
        cache_dir: str | None = None,
        opener: Opener | None = None,
    ) -> None:
        """`debug_search` says where separate debug files are looked for;
        `cache_dir`, if set, keeps parsed tables on disk by build ID.
        `opener` replaces open_mapped: a replay (agent/record/capture.py) serves
        a mapping's file from a capture directory instead of /proc."""
        self._opener = opener
        self.debug_search = debug_search or DebugSearch()
        self.disk_cache = SymbolCache(cache_dir) if cache_dir else None
        self._perf_maps: dict[int, PerfMapReader] = {}
        self.proc_root = proc_root
        self.kallsyms_path = kallsyms_path
        self.notes_path = notes_path
        self.max_snapshots = max_snapshots
        self.stats = SymbolizerStats()
        self._procs: dict[int, ProcessInfo] = {}
        self._tables: LruCache[ElfSymbols] = LruCache(cache_size)
        self._bad_files: LruCache[str] = LruCache(cache_size)
        # resolve_elf's answers and recently stat'ed files: a tool that asks
        # for thousands of addresses of one file pays the stat and the frame
        # building once per address and once per second, not per call
        self._elf_answers: dict[tuple[int, int], ResolvedFrame] = {}
        self._recent_files: dict[str, tuple[ElfSymbols, float]] = {}
        self._kernel: KernelSymbols | None = None
        self._kernel_build_id: str | None = None

    # -- processes -------------------------------------------------------

    def _exited(self, info: ProcessInfo, what: str) -> None:
        """Count, once per process, one that exited before `what` was read."""
        log.debug("pid %d exited before %s could be read", info.pid, what)
        if not info.exited:
            info.exited = True
            self.stats.exited_unread += 1

    def observe(self, pid: int, maps_text: str | None = None) -> bool:
        """Capture the maps of `pid` and load its executable mappings' tables;
        True if they differ from the last capture (a new snapshot).

        Call it when a pid is first seen and after it execs. A vanished or
        hidden pid is still recorded, so its addresses resolve to None
        without touching /proc again. `maps_text`: the maps the caller just
        read, so they are not read twice; the same text as last time is not
        parsed again.
        """
        info = self._procs.setdefault(pid, ProcessInfo(pid))
        try:
            text = read_maps(pid, self.proc_root) if maps_text is None else maps_text
        except OSError as exc:
            self.stats.vanished_pids += 1
            if _gone(exc):  # it exited: on a busy host, hundreds a second; counted, not warned
                self._exited(info, "its maps")
            else:
                self.stats.warn_once(f"pid:{pid}", f"cannot read maps of pid {pid}: {exc}")
            return False
        self.stats.observed += 1
        info.exe = read_exe(pid, self.proc_root) or info.exe
        info.comm = read_comm(pid, self.proc_root) or info.comm
        digest = (len(text), hash(text))
        if info.snapshots and info.maps_digest == digest:
            self._observe_perf_map(pid, info.snapshots[0].maps)
            return False
        # sorted for bisect: the kernel sorts, a replayed or edited text may not
        maps = tuple(sorted(parse_maps(text), key=_start))
        info.maps_digest = digest
        self._observe_perf_map(pid, maps)
        if info.snapshots and info.snapshots[0].maps == maps:
            return False
        info.add(Snapshot(maps, self._load_tables(pid, maps)), self.max_snapshots)
        return True

    def forget(self, pid: int) -> None:
        """Drop what is kept for `pid` (its tables stay cached for others)."""
        self._procs.pop(pid, None)
        self._perf_maps.pop(pid, None)

    def resolve_user(self, pid: int, address: int) -> ResolvedFrame:
        """Resolve exactly `address` (callers pass return addresses minus 1).

        A pid never observed is observed now, while it may still exist.
        """
        if pid not in self._procs:
            self.observe(pid)
        hit = self._procs[pid].find(address)
        if hit is None or hit[1] is None:
            jit = self._resolve_jit(pid, address, hit[0] if hit else None)
            if jit is not None:
                return jit
        if hit is None:
            return self._miss(ResolvedFrame(address))
        entry, table = hit
        if table is None:
            return self._miss(ResolvedFrame(address, entry))
        vaddr = table.file_offset_to_vaddr(entry.file_offset(address))
        return self._resolve_in(table, vaddr, ResolvedFrame(address, entry, table.build_id))

    def resolve_elf(self, path: str, vaddr: int) -> ResolvedFrame:
        """A file's own virtual address (what addr2line takes), through the
        same tables, debug files and caches as process addresses.
        Raises OSError if the file cannot be opened, ElfError if not ELF."""
        table = self.load_file(path)
        key = (id(table), vaddr)
        answer = self._elf_answers.get(key)
        if answer is None:
            if len(self._elf_answers) >= MAX_ELF_ANSWERS:
                self._elf_answers.clear()
            answer = self._resolve_in(table, vaddr, ResolvedFrame(vaddr, None, table.build_id))
            self._elf_answers[key] = answer
        return answer

    def load_file(self, path: str) -> ElfSymbols:
        """The (cached) table of a file on this host's file system; a file
        looked at less than a second ago is not stat'ed again."""
        now = time.monotonic()
        recent = self._recent_files.get(path)
        if recent is not None and now - recent[1] < RECHECK_FILE_S:
            return recent[0]
        table = self._load_file(path)
        if len(self._recent_files) >= MAX_ELF_ANSWERS:
            self._recent_files.clear()
        self._recent_files[path] = (table, now)
        return table

    def _load_file(self, path: str) -> ElfSymbols:
        """A host file named by the CLI's user (root or not): its real path,
        so its debuglink neighbours are found without crossing a symlink;
        opened as a regular file only (never a FIFO that would block)."""
        path = os.path.realpath(path)
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        known = self._tables.get(file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        if known is not None:
            return known
        with open_regular(path) as f:
            read_build_id(f)  # not ELF: ElfError, before anything is logged
            table = self._table_from_file(f, Place("", path), path, "")
            if table is None:
                raise ElfError(self._bad_files.get(_fkey(f)) or "not a regular file")
            return table

    def _resolve_in(
        self, table: ElfSymbols, vaddr: int | None, base: ResolvedFrame
    ) -> ResolvedFrame:
        sym = table.lookup(vaddr) if vaddr is not None else None
        lines = self._lines(table, vaddr, sym.name if sym else "")
        if vaddr is None or not lines:
            return self._miss(replace(base, elf_vaddr=vaddr))
        self.stats.resolved += 1
        offset = vaddr - sym.start if sym else 0
        return replace(
            base, function=lines[-1].function, symbol_offset=offset, elf_vaddr=vaddr, lines=lines
        )

    def _lines(self, table: ElfSymbols, vaddr: int | None, symbol: str) -> tuple[ResolvedLine, ...]:
        """Source lines from DWARF (guarded: a DWARF bug must not lose the symbol)."""
        source: tuple[SourceFrame, ...] = ()
        if table.dwarf is not None and vaddr is not None:
            try:
                spent = table.dwarf.over_budget
                source = table.dwarf.frames(vaddr)
                if table.dwarf.over_budget and not spent:
                    self.stats.budget_exceeded += 1
            except Exception as exc:
                self.stats.bad_dwarf += 1
                self.stats.warn_once(f"dwarf:{table.build_id}", f"DWARF lookup failed: {exc!r}")
        return source_lines(source, symbol)

    def _observe_perf_map(self, pid: int, maps: tuple[MapEntry, ...]) -> None:
        """Read the perf map now, while /proc/PID/root still leads to it."""
        del maps  # (any process may have one: JIT code can live in memfd mappings too)
        reader = self._perf_maps.get(pid)
        if reader is None:  # kept even without a map yet: a runtime may write it later
            reader = self._perf_maps[pid] = PerfMapReader(pid, self.proc_root, self.stats)
        reader.refresh()

    def _resolve_jit(self, pid: int, address: int, entry: MapEntry | None) -> ResolvedFrame | None:
        reader = self._perf_maps.get(pid)
        found = reader.lookup(address) if reader else None
        if found is None:
            return None
        self.stats.resolved += 1
        lines = (ResolvedLine(found.name, found.name),)
        return ResolvedFrame(
            address, entry, "", found.name, address - found.start, lines=lines, kind="jit"
        )

    def save_cache(self) -> int:
        """Write tables that gained decoded DWARF since their last save to the
        on-disk cache; returns how many were written (0 without a cache)."""
        if self.disk_cache is None:
            return 0
        written = 0
        for table in self._tables.values():
            if not table.build_id or (table.saved and not table.dirty()):
                continue
            try:
                self.disk_cache.store(table.build_id, table_state(table))
                table.saved = True
                written += 1
            except (OSError, ValueError) as exc:
                self.stats.warn_once("disk-cache", f"cannot write the symbol cache: {exc}")
        return written

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
            if self._kernel.hidden:
                self.stats.kallsyms_hidden += 1
                self.stats.warn_once("kallsyms-hidden", hidden_kallsyms_message(self.kallsyms_path))
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
            return self._miss(ResolvedFrame(address, kind="kernel"))
        self.stats.resolved += 1
        lines = (ResolvedLine(sym.name, sym.name),)
        return ResolvedFrame(
            address, None, "", sym.name, address - sym.start, module=sym.module, lines=lines,
            kind="kernel",
        )  # fmt: skip

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
            if self._opener is None:
                f, place = open_mapped(pid, entry, self.proc_root)
            else:
                f, place = self._opener(pid, entry)
        except UnsafeFile as exc:
            self.stats.refused_files += 1
            self.stats.warn_once(f"refused:{entry.path}", f"refusing {entry.path}: {exc}")
            return None
        except OSError as exc:
            self.stats.unreadable_files += 1
            proc = f"{self.proc_root}/{pid}"
            # it exited meanwhile: its /proc entry is gone, or (a zombie) its root
            if _gone(exc) and (exc.filename == f"{proc}/root" or not os.path.exists(proc)):
                self._exited(self._procs.setdefault(pid, ProcessInfo(pid)), entry.path)
            else:
                self.stats.warn_once(f"open:{entry.path}", f"cannot open {entry.path}: {exc}")
            return None
        root = f"{self.proc_root}/{pid}/root"
        with f:
            return self._table_from_file(f, place, entry.path, root)

    def _table_from_file(
        self, f: IO[bytes], opened: Place, path: str, root: str
    ) -> ElfSymbols | None:
        """The cached table for this file, by identity then build ID; else parse it.

        A file already found unusable is not read again (nor warned about).
        Only regular files are read: a device mapped executable could block.
        """
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            self.stats.unreadable_files += 1
            return None
        fkey = _fkey(f)
        table = self._tables.get(fkey)
        if table is None and self._bad_files.get(fkey) is None:
            try:
                table = self._load_by_build_id(f, fkey, opened, path, root)
            except ElfError as exc:
                # remembered by identity: a bomb is parsed once, not per process
                self._bad_files.put(fkey, str(exc))
                self.stats.bad_elf += 1
                if isinstance(exc, BudgetExceeded):
                    self.stats.budget_exceeded += 1
                self.stats.warn_once(f"elf:{fkey}", f"cannot symbolize {path}: {exc}")
        elif table is not None:
            self.stats.table_cache_hits += 1
        return table

    def _load_by_build_id(
        self, f: IO[bytes], fkey: str, opened: Place, path: str, root: str
    ) -> ElfSymbols:
        build_id = read_build_id(f)
        table = self._tables.get(build_id_key(build_id)) if build_id else None
        if table is None:
            table = self._restore(build_id) or self._parse(f, opened, path, root)
            if build_id:
                self._tables.put(build_id_key(build_id), table)
        else:
            self.stats.table_cache_hits += 1
        self._tables.put(fkey, table)
        return table

    def _parse(self, f: IO[bytes], opened: Place, path: str, root: str) -> ElfSymbols:
        def warn(message: str) -> None:
            self.stats.bad_dwarf += 1
            self.stats.warn_once(f"debug:{message[:200]}", message)

        table = load_object(f, opened, path, root, self.debug_search, warn)
        self.stats.tables_loaded += 1
        return table

    def _restore(self, build_id: str) -> ElfSymbols | None:
        if self.disk_cache is None or not build_id:
            return None
        state = self.disk_cache.load(build_id)
        if state is None:
            return None
        try:
            table = restore_table(build_id, state, self.stats.warn_once)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            self.stats.warn_once(f"disk-cache:{build_id}", f"ignoring a bad cache entry: {exc}")
            return None
        self.stats.disk_cache_hits += 1
        return table


def _fkey(f: IO[bytes]) -> str:
    st = os.fstat(f.fileno())
    return file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
