"""Loading unwind tables into the walker's maps, once per binary.

For each process the walker is told about, its executable file mappings are
read from /proc/PID/maps; each mapped binary's rows go into `unwind_rows`
once (found again by build ID, or by file identity without one), and the
process gets its own sorted list of mappings in `unwind_maps`.

Both arrays are fixed-size pools, carved into ranges by `RangeAllocator`.
When a pool runs out, what processes that are gone held is reclaimed first:
their mapping ranges, then the rows of binaries no loaded process maps any
more, least recently mapped first (`rows_evicted`; a binary mapped again
later is placed again, from the disk cache). Only when that is not enough
is the binary or process left to frame pointers: the event is counted
(`rows_full`, `maps_full`) and logged once, naming the option to raise, and
a binary left out is tried again once rows have been freed (or a second
later, when processes may have exited).

A table not in the disk cache is built from the file's CFI: at once for
most files (libc: 0.15 s), but on the `TableBuilder`'s thread for files of
ASYNC_BYTES or more (libLLVM: 5 s), so the thread that loads (the agent's
poll loop) does not stop for seconds. Meanwhile a process seen for the
first time is not published (the CPU and wait programs keep its samples'
raw stacks, walked once the table is there: `layout()` waits for it), and
one published before keeps its other binaries' rows and is walked with
frame pointers in the new one; `finish_builds()` (at each poll) places
what was built and publishes the processes that waited.

The maps themselves are written through a `MapWriter`, so this module has no
BPF in it and its tests use a plain fake.

For samples taken before a process was loaded (raw stacks, see
agent/unwind/rawwalk.py), the loader also remembers each process's last
layout (`layout(pid)`, kept after it exits: its raw stacks are walked at the
next drain) and the rows of recently placed binaries; older ones are read
back from the disk cache when needed.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Protocol

from agent.unwind.layout import pack_mapping
from agent.unwind.rawwalk import Mapping, Rows
from agent.unwind.table import (
    UNWIND_ROWS,
    UNWIND_SECONDS,
    ElfUnwindInfo,
    TableCache,
    TableError,
    load_unwind_info,
    unwind_budget,
)
from symbolizer.budget import Budget, BudgetExceeded
from symbolizer.cache import LruCache, file_key
from symbolizer.elf import ElfError, read_build_id
from symbolizer.process import open_mapped_file
from symbolizer.procmaps import MapEntry, parse_maps, read_maps

log = logging.getLogger("bpfprof.unwind")
MAX_FAILED = 4096  # failed files remembered (least recently seen forgotten first)
MAX_LAYOUTS = 4096  # processes whose layout is kept for raw stacks (exited ones too)
MAX_RECENT_ROWS = 16  # binaries whose rows stay in memory for raw stacks
RETRY_S = 1.0  # a binary with no room is tried again this long after, at least
ASYNC_BYTES = 16 << 20  # files this big have their tables built on the builder's thread


class MapWriter(Protocol):
    def write_rows(self, first: int, data: bytes) -> None: ...
    def write_mappings(self, first: int, data: bytes) -> None: ...
    def set_process(self, pid: int, first_map: int, count: int) -> None: ...
    def delete_process(self, pid: int) -> None: ...


class RangeAllocator:
    """First-fit ranges of [0, size): few, long-lived allocations."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[tuple[int, int]] = [(0, size)] if size > 0 else []

    def alloc(self, count: int) -> int | None:
        for i, (start, length) in enumerate(self._free):
            if length >= count:
                if length == count:
                    del self._free[i]
                else:
                    self._free[i] = (start + count, length - count)
                return start
        return None

    def free(self, start: int, count: int) -> None:
        """Give a range back, merging it with free neighbours."""
        spans = sorted([*self._free, (start, count)])
        merged: list[tuple[int, int]] = []
        for s, n in spans:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self._free = merged

    @property
    def used(self) -> int:
        return self.size - sum(n for _, n in self._free)


@dataclass
class LoaderStats:
    processes: int = 0  # processes loaded (again after an exec)
    binaries: int = 0  # binaries whose rows are in the map
    rows: int = 0  # rows in the map
    tables_built: int = 0  # tables built from CFI (not found in the disk cache)
    rows_full: int = 0  # binaries left to frame pointers: the rows map was full
    rows_evicted: int = 0  # binaries whose rows were freed: no loaded process mapped them
    tables_deferred: int = 0  # tables built on the builder's thread (big files)
    maps_full: int = 0  # processes left to frame pointers: the mappings map was full
    errors: int = 0  # binaries whose CFI could not be read
    budget_exceeded: int = 0  # of those, binaries over their budget (bytes, rows, time)
    skipped_bad: int = 0  # mappings of a binary that failed before: not read again


@dataclass(frozen=True)
class LoadedBinary:
    first_row: int
    row_count: int
    info: ElfUnwindInfo
    key: str = ""  # build-id:... or a file identity


@dataclass(frozen=True)
class Placed:
    """One executable mapping of a process, as the walker's map holds it;
    `pending`: the key of its binary while its table is being built."""

    start: int
    end: int
    base: int = 0
    binary: LoadedBinary | None = None
    pending: str = ""
    offset: int = 0  # the mapping's file offset, to place it once built

    def packed(self) -> bytes:
        if self.binary is None:
            return pack_mapping(self.start, self.end, 0, 0, 0)
        b = self.binary
        return pack_mapping(self.start, self.end, self.base, b.first_row, b.row_count)


@dataclass(frozen=True)
class _Job:
    key: str
    file: IO[bytes]
    build_id: str
    cache: TableCache
    budget: Budget
    future: Future[ElfUnwindInfo]


class TableBuilder:
    """Builds the tables of big files on one background thread (a daemon:
    it does not hold up the process's exit; the disk cache is written by
    rename, so an interrupted build leaves nothing half-written). Shared by
    every program's loader, so a file is built once: a second request for
    a key being built gets the same future."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._building: dict[str, Future[ElfUnwindInfo]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(
        self, key: str, f: IO[bytes], build_id: str, cache: TableCache, budget: Budget
    ) -> Future[ElfUnwindInfo]:
        """Build the table of `f` (which the builder closes)."""
        with self._lock:
            future = self._building.get(key)
            if future is not None:
                f.close()
                return future
            future = self._building[key] = Future()
            self._jobs.put(_Job(key, f, build_id, cache, budget, future))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="bpfprof-unwind-tables", daemon=True
                )
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                with job.file:
                    job.future.set_result(
                        load_unwind_info(job.file, job.build_id, job.cache, job.budget)
                    )
            except Exception as exc:  # the loader sorts it out, as it would at once
                job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._building.pop(job.key, None)


BUILDER = TableBuilder()  # the agent's one builder thread


@dataclass(frozen=True)
class _Pending:
    """A binary whose table is being built."""

    future: Future[ElfUnwindInfo]
    path: str
    fkey: str  # its file identity, remembered if the build fails
    pids: set[int]  # processes waiting for it


class UnwindLoader:
    """Keeps the walker's maps in step with the processes it is told about."""

    def __init__(
        self,
        writer: MapWriter,
        *,
        max_rows: int,
        max_maps: int,
        cache: TableCache,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        builder: TableBuilder | None = None,
    ) -> None:
        self._writer = writer
        self._builder = builder  # None: every table is built at once
        self._pending: dict[str, _Pending] = {}
        self._rows = RangeAllocator(max_rows)
        self._maps = RangeAllocator(max_maps)
        self._cache = cache
        self._proc_root = proc_root
        # by key, least recently mapped first; None: no CFI rows to place
        self._binaries: OrderedDict[str, LoadedBinary | None] = OrderedDict()
        self._users: Counter[str] = Counter()  # binary key -> loaded processes mapping it
        self._keys: dict[int, set[str]] = {}  # pid -> the binaries it was published with
        self._loading: set[str] = set()  # binaries of the load in progress
        # binaries with no room: key -> (binaries evicted then, when), see _may_retry
        self._no_room: LruCache[tuple[int, float]] = LruCache(MAX_FAILED)
        self._freed = 0  # binaries evicted so far: a change means room may be there
        self._clock = clock
        # files whose table could not be built, by identity (dev, inode,
        # size, mtime: never by build ID, which any file can claim), so a
        # bomb is parsed once and not once per process that maps it
        self._failed: LruCache[str] = LruCache(MAX_FAILED)
        self._procs: dict[int, tuple[int, int]] = {}  # pid -> (first_map, count)
        self._warned: set[str] = set()
        self._layouts: LruCache[list[Placed]] = LruCache(MAX_LAYOUTS)
        self._recent: LruCache[Rows] = LruCache(MAX_RECENT_ROWS)
        self.stats = LoaderStats()

    @property
    def cache(self) -> TableCache:
        return self._cache

    def load(self, pid: int, keep: Iterable[str] = ()) -> bool:
        """(Re)load a process's mappings; False if it is gone or has no room.
        Binaries `keep` are not evicted to make room for its others."""
        try:
            entries = parse_maps(read_maps(pid, self._proc_root))
        except OSError:
            return False
        self._loading = set(keep)
        placed = [self._mapping(pid, e) for e in entries if e.is_exec]
        self._loading.clear()
        if placed:
            self._layouts.put(str(pid), placed)
        for p in placed:
            if p.pending:
                self._pending[p.pending].pids.add(pid)
        if any(p.pending for p in placed) and pid not in self._procs:
            return True  # published once its tables are built: raw stacks meanwhile
        return self._publish_placed(pid, placed)

    def _publish_placed(self, pid: int, placed: list[Placed]) -> bool:
        keys = {p.binary.key for p in placed if p.binary is not None}
        if not self._publish(pid, [p.packed() for p in placed]):
            return False
        self._use(pid, keys)
        return True

    def layout(self, pid: int, wait_s: float = 2 * UNWIND_SECONDS) -> list[Mapping] | None:
        """The process's mappings as last loaded, with their rows, for a
        walk in user space; None if it was never loaded. Waits up to
        `wait_s` for the tables of its binaries still being built; those
        not built by then have no rows in it."""
        placed = self._layouts.get(str(pid))
        if placed is None:
            return None
        pending = {p.pending for p in placed if p.pending}
        if pending:
            self.finish_builds(wait=pending, timeout=wait_s)
            placed = self._layouts.get(str(pid)) or placed
        return [Mapping(p.start, p.end, p.base, self._rows_of(p.binary)) for p in placed]

    def building(self, pid: int) -> bool:
        """Whether a table of the process's binaries is still being built."""
        return any(p.pending for p in self._layouts.get(str(pid)) or ())

    def finish_builds(self, wait: Iterable[str] = (), timeout: float = 0.0) -> int:
        """Place the tables built on the builder's thread (waiting up to
        `timeout` for those of `wait`) and publish the processes that waited
        for them; how many were placed."""
        waited = [self._pending[k].future for k in wait if k in self._pending]
        if waited and timeout > 0:
            wait_futures(waited, timeout=timeout)
        done = [k for k, p in self._pending.items() if p.future.done()]
        for key in done:
            job = self._pending.pop(key)
            try:
                info = job.future.result()
            except (
                Exception
            ) as exc:  # a parse error, as in _binary; or a bug: not the poll loop's end
                self._failed_table(job.fkey, job.path, exc)
            else:
                self._placed_table(key, info, job.path)
            for pid in job.pids:
                # loaded again while it runs (its maps may have changed, and
                # rows of its other binaries given to this one); the layout
                # of one that exited (no maps, or empty ones: a zombie) is
                # settled for its raw stacks
                self.load(pid, keep={key})
                self._settle(pid)
        return len(done)

    def _settle(self, pid: int) -> None:
        """The last layout of a process, with the tables done since placed
        (for one that is gone: a process loaded again has a new layout)."""
        placed = self._layouts.get(str(pid))
        if placed is None:
            return
        self._layouts.put(
            str(pid),
            [
                self._placed_at(p.start, p.end, p.offset, self._binaries.get(p.pending))
                if p.pending and p.pending not in self._pending
                else p
                for p in placed
            ],
        )

    def _rows_of(self, binary: LoadedBinary | None) -> Rows | None:
        if binary is None:
            return None
        rows = self._recent.get(binary.key)
        if rows is None and binary.key.startswith("build-id:"):
            table = self._cache.get(binary.key.removeprefix("build-id:"))
            if table is not None and table.count == binary.row_count:
                rows = Rows(table.data)
                self._recent.put(binary.key, rows)
        return rows

    def forget(self, pid: int) -> None:
        for pending in self._pending.values():
            pending.pids.discard(pid)
        held = self._procs.pop(pid, None)
        if held is not None:
            self._writer.delete_process(pid)
            self._maps.free(*held)
        self._use(pid, set())

    def _use(self, pid: int, keys: set[str]) -> None:
        """`pid` is published with the rows of binaries `keys` now."""
        self._users.update(keys)
        for key in self._keys.pop(pid, set()):
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
        if keys:
            self._keys[pid] = keys

    def sweep(self) -> int:
        """Forget processes that have exited; how many were."""
        gone = [pid for pid in self._procs if not os.path.exists(f"{self._proc_root}/{pid}")]
        for pid in gone:
            self.forget(pid)
        return len(gone)

    def _publish(self, pid: int, mappings: list[bytes]) -> bool:
        if not mappings:  # a process with no executable mappings: gone mid-read
            self.forget(pid)
            return True
        first = self._maps.alloc(len(mappings))
        if first is None and self.sweep():
            first = self._maps.alloc(len(mappings))
        if first is None:
            self.stats.maps_full += 1
            self._warn(
                "maps",
                "unwind mapping table full: some processes are unwound with "
                "frame pointers only (raise --unwind-mappings)",
            )
            return False
        self._writer.write_mappings(first, b"".join(mappings))
        self._writer.set_process(pid, first, len(mappings))
        old = self._procs.get(pid)
        self._procs[pid] = (first, len(mappings))
        if old is not None:
            self._maps.free(*old)
        self.stats.processes += 1
        return True

    def _mapping(self, pid: int, entry: MapEntry) -> Placed:
        """Every executable mapping is listed, with no rows where there is no
        table ([vdso], JIT code, a binary without CFI): the walker uses frame
        pointers there, and takes a PC outside all of them for a new mapping
        (dlopen) to tell user space about."""
        binary = self._binary(pid, entry) if entry.is_file else None
        if isinstance(binary, str):
            return Placed(entry.start, entry.end, pending=binary, offset=entry.offset)
        return self._placed_at(entry.start, entry.end, entry.offset, binary)

    @staticmethod
    def _placed_at(start: int, end: int, offset: int, binary: LoadedBinary | None) -> Placed:
        if binary is None:
            return Placed(start, end)
        bias = binary.info.load_bias(start, offset)
        if bias is None:
            return Placed(start, end)
        return Placed(start, end, bias + binary.info.table.base, binary)

    def _binary(self, pid: int, entry: MapEntry) -> LoadedBinary | str | None:
        """The binary of a mapping as placed; its key while its table is
        being built; None when it has no rows (none, failed, no room)."""
        fkey = ""
        try:
            with open_mapped_file(pid, entry, self._proc_root) as f:
                fkey = _file_key(f)
                if self._failed.get(fkey) is not None:
                    self.stats.skipped_bad += 1
                    return None
                key, build_id = _identity(f)
                if key in self._binaries:
                    self._binaries.move_to_end(key)
                    self._loading.add(key)
                    return self._binaries[key]
                if key in self._pending:
                    return key
                if not self._may_retry(key):
                    return None
                # no table bigger than the rows map could ever be placed
                budget = unwind_budget(self._rows.size or UNWIND_ROWS)
                if self._defer(f, build_id):
                    assert self._builder is not None
                    copy = os.fdopen(os.dup(f.fileno()), "rb")
                    future = self._builder.submit(key, copy, build_id, self._cache, budget)
                    self._pending[key] = _Pending(future, entry.path, fkey, set())
                    self.stats.tables_deferred += 1
                    return key
                info = load_unwind_info(f, build_id, self._cache, budget)
        except (OSError, ElfError, TableError) as exc:
            self._failed_table(fkey, entry.path, exc)
            return None
        loaded = self._placed_table(key, info, entry.path)
        if loaded is not None:
            self._loading.add(key)
        return loaded

    def _defer(self, f: IO[bytes], build_id: str) -> bool:
        """Whether to build this file's table on the builder's thread: a big
        file whose table is not in the disk cache."""
        if self._builder is None or os.fstat(f.fileno()).st_size < ASYNC_BYTES:
            return False
        cached = self._cache.path(build_id) if build_id else None
        return cached is None or not cached.exists()

    def _failed_table(self, fkey: str, path: str, exc: Exception) -> None:
        self.stats.errors += 1
        if fkey:
            self._failed.put(fkey, str(exc))
        if isinstance(exc, BudgetExceeded):
            self.stats.budget_exceeded += 1
            self._warn("budget", f"no unwind table for {path} (and maybe others): {exc}")
        log.debug("no unwind table for %s: %s", path, exc)

    def _placed_table(self, key: str, info: ElfUnwindInfo, path: str) -> LoadedBinary | None:
        """A table built or read: its rows into the map, if it has any and
        they fit."""
        if info.table.count == 0:
            self._binaries[key] = None
            return None
        loaded = self._place(info, path, key)
        if loaded is None:
            self._no_room.put(key, (self._freed, self._clock()))
            return None
        self._binaries[key] = loaded
        return loaded

    def _may_retry(self, key: str) -> bool:
        """Whether a binary is worth placing: not one that found no room,
        unless rows were freed since, or time passed for processes to exit."""
        failed = self._no_room.get(key)
        if failed is None:
            return True
        freed, when = failed
        return freed != self._freed or self._clock() - when >= RETRY_S

    def _place(self, info: ElfUnwindInfo, path: str, key: str) -> LoadedBinary | None:
        count = info.table.count
        first = self._rows.alloc(count)
        if first is None:
            first = self._make_room(count)
        if first is None:
            self.stats.rows_full += 1
            self._warn(
                "rows",
                f"unwind rows map full of binaries that running processes map: {path} "
                "(and maybe later binaries) is unwound with frame pointers only (raise "
                "--unwind-rows, or limits.unwind_rows in the agent's config)",
            )
            return None
        self._writer.write_rows(first, info.table.data)
        self._recent.put(key, Rows(info.table.data))
        self.stats.binaries += 1
        self.stats.rows += count
        # The rows live in the map now: keep what placing mappings needs, not
        # a second copy of them (MiBs per large binary, for as long as we run).
        kept = replace(info, table=replace(info.table, data=b""))
        return LoadedBinary(first, count, kept, key)

    def _make_room(self, count: int) -> int | None:
        """`count` rows from those of binaries no loaded process maps,
        least recently mapped first; None if they are not enough. Processes
        that exited are let go first."""
        self.sweep()
        evictable = [
            (key, binary)
            for key, binary in self._binaries.items()
            if binary is not None and not self._users[key] and key not in self._loading
        ]
        for key, binary in evictable:
            del self._binaries[key]
            self._rows.free(binary.first_row, binary.row_count)
            self._freed += 1
            self.stats.rows_evicted += 1
            self.stats.binaries -= 1
            self.stats.rows -= binary.row_count
            first = self._rows.alloc(count)
            if first is not None:
                return first
        return None

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _identity(f: IO[bytes]) -> tuple[str, str]:
    """(cache key, build ID) of an opened mapped file."""
    build_id = read_build_id(f)
    if build_id:
        return f"build-id:{build_id}", build_id
    return _file_key(f), ""


def _file_key(f: IO[bytes]) -> str:
    st = os.fstat(f.fileno())
    return file_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def default_cache_dir() -> Path:
    """$BPFPROF_CACHE_DIR, else $XDG_CACHE_HOME/bpfprof, else ~/.cache/bpfprof."""
    explicit = os.environ.get("BPFPROF_CACHE_DIR")
    if explicit:
        return Path(explicit) / "unwind"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bpfprof" / "unwind"
