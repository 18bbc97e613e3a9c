"""JIT symbols from perf map files: /tmp/perf-PID.map.

Runtimes that generate machine code write one line per code region,
`START SIZE NAME` in hex (START with or without 0x): Node with
--perf-basic-prof, the JVM with a perf-map agent, CPython 3.12+ with
`-X perf` or PYTHONPERFSUPPORT=1 ("py::func:/path/file.py"), LuaJIT, .NET.

Two container details: the file lives in the process's own /tmp, so it is
opened through /proc/PID/root; and its name carries the pid as the process
sees it, which differs from ours inside a pid namespace (the last field
of NSpid in /proc/PID/status).

The agent reads it as root, and the process's user writes it, so:

- it is opened inside the process's own root (openat2 RESOLVE_IN_ROOT),
  never through a symlink (O_NOFOLLOW: a link to /etc/shadow or
  /dev/urandom is refused), never blocking (O_NONBLOCK: a FIFO is refused,
  not waited on), and only as a regular file owned by the process's
  effective uid. That is perf's own rule (tools/perf/util/symbol.c:
  "not owned by current user or root") adapted to a reader that is root:
  perf compares the owner with its own euid; we compare it with the
  target's, which is the uid the runtime created the file as (its fsuid,
  equal to its euid unless it called setfsuid(2), which no JIT runtime
  does). A root-owned file is accepted only for a root process: with
  fs.protected_hardlinks off, a user can hard-link a root-only file into
  /tmp, and it would then be root-owned;
- what is read is bounded per process (MAX_MAP_BYTES, MAX_MAP_ENTRIES)
  and per refresh (REFRESH_BYTES, REFRESH_SECONDS), so a map that grows
  forever or holds 20 million lines costs bounded memory and time;
- a map that did not change is looked at again after REFRESH_EVERY_S; one
  that keeps growing as often as a missed address asks, but within
  REFRESH_SHARE of the agent's time (each look is timed).

The map grows while the runtime runs: each refresh parses only the bytes
appended since the last one (a partial last line waits for the next), and
starts over when the file shrank or was replaced. Later lines win over
earlier ones for the same start (code regions get reused).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from symbolizer.perfmap_table import JitSymbol, PerfMap, read_entries
from symbolizer.safeopen import UnsafeFile, open_in_root
from symbolizer.stats import SymbolizerStats

__all__ = ["JitSymbol", "PerfMap", "PerfMapLimits", "PerfMapReader", "ProcessIds"]

# A big JVM or Node process writes a few hundred thousand lines of ~80
# bytes over its life; a million entries and 64 MiB leave room for that and
# still keep one process's map under ~100 MiB (28 bytes an entry + names).
MAX_MAP_BYTES = 64 << 20
MAX_MAP_ENTRIES = 1 << 20
# One refresh parses at most this much, so a writer that keeps growing its
# map (or a huge one met for the first time) delays the agent's loop by a
# bounded amount; the rest is read at the next refreshes.
REFRESH_BYTES = 4 << 20
REFRESH_SECONDS = 0.2
REFRESH_EVERY_S = 1.0  # a quiet map: open+fstat are cheap, but not on every miss
REFRESH_SHARE = 0.05  # a growing map: re-read right away, but not for more than this


@dataclass(frozen=True)
class PerfMapLimits:
    total_bytes: int = MAX_MAP_BYTES
    entries: int = MAX_MAP_ENTRIES
    refresh_bytes: int = REFRESH_BYTES
    refresh_seconds: float = REFRESH_SECONDS
    every_s: float = REFRESH_EVERY_S
    share: float = REFRESH_SHARE


@dataclass(frozen=True)
class ProcessIds:
    """What names and guards a process's perf map."""

    nspid: int  # the pid as the process sees it (innermost NSpid)
    euid: int  # the uid its files are created as


def parse_status(text: str, pid: int) -> ProcessIds | None:
    """NSpid and Uid of /proc/PID/status; `pid` when there is no NSpid line
    (kernels before 4.1). None without a Uid line."""
    nspid, euid = pid, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        try:
            if key == "NSpid" and fields:
                nspid = int(fields[-1])
            elif key == "Uid" and len(fields) >= 2:
                euid = int(fields[1])  # real, effective, saved, fs
        except ValueError:
            return None
    return ProcessIds(nspid, euid) if euid is not None else None


def read_status(pid: int, proc_root: str = "/proc") -> ProcessIds | None:
    try:
        with open(f"{proc_root}/{pid}/status", encoding="ascii", errors="replace") as f:
            return parse_status(f.read(), pid)
    except OSError:
        return None


class PerfMapReader:
    """The perf map of one process, read as it grows, within bounds."""

    def __init__(
        self,
        pid: int,
        proc_root: str = "/proc",
        stats: SymbolizerStats | None = None,
        limits: PerfMapLimits = PerfMapLimits(),
        clock: Callable[[], float] = time.monotonic,
        work_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """`clock` says when to look again; `work_clock` measures what a
        look costs (the agent's own CPU time: on a busy host the wall time
        of a look is mostly waiting for a CPU, which is no cost to bound)."""
        self.pid = pid
        self.proc_root = proc_root
        self.stats = stats if stats is not None else SymbolizerStats()
        self.limits = limits
        self._clock = clock
        self._work = work_clock
        self.map = PerfMap()
        self.present = False  # a map was opened at least once
        self._next = float("-inf")  # the clock time before which not to look
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) being read
        self._offset = 0  # bytes of it parsed so far
        self._skipping = False
        self._full = False  # a bound was reached: read no more of this file
        self._refused = self._truncated = False  # counted once each

    def refresh(self) -> bool:
        """Parse what was appended since the last look, unless it is too soon
        to look (see the module's doc). True if the process has (had) a
        readable map."""
        now = self._clock()
        if now < self._next:
            return self.present
        began = self._work()
        grew = self._look(began)
        spent = self._work() - began
        self._next = now + (spent / self.limits.share if grew else self.limits.every_s)
        return self.present

    def _look(self, now: float) -> bool:
        """Open the map as the process's user would own it; True if it grew.
        `now`: the work clock at the start of the look."""
        ids = read_status(self.pid, self.proc_root)
        if ids is None:  # gone: keep what was read
            return False
        try:
            with open_in_root(
                f"{self.proc_root}/{self.pid}/root",
                f"/tmp/perf-{ids.nspid}.map",
                owner=ids.euid,
                nofollow=True,
            ) as f:
                self.present = True
                return self._read(f, now)
        except UnsafeFile as exc:
            self._refuse(exc)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink (O_NOFOLLOW)
                self._refuse(exc)
        return False

    def lookup(self, address: int) -> JitSymbol | None:
        self.refresh()
        return self.map.lookup(address)

    def _read(self, f: BinaryIO, now: float) -> bool:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != self._file or st.st_size < self._offset:
            self._start_over((st.st_dev, st.st_ino))
        if self._full or st.st_size <= self._offset:
            return False
        lim = self.limits
        f.seek(self._offset)
        chunk = read_entries(
            f,
            self.map,
            max_bytes=min(lim.refresh_bytes, lim.total_bytes - self._offset),
            max_entries=lim.entries - len(self.map),
            skipping=self._skipping,
            deadline=now + lim.refresh_seconds,
            clock=self._work,
        )
        self._offset += chunk.consumed
        self._skipping = chunk.skipping
        if self._offset >= lim.total_bytes or len(self.map) >= lim.entries:
            self._full = True
            self._truncate()
        return chunk.consumed > 0

    def _start_over(self, file: tuple[int, int]) -> None:
        """A new file, or the old one truncated: a new map."""
        self.map = PerfMap()
        self._file, self._offset = file, 0
        self._skipping = self._full = False

    def _refuse(self, exc: OSError) -> None:
        if not self._refused:
            self._refused = True
            self.stats.perf_map_refused += 1
        self.stats.warn_once(
            f"perf-map-refused:{self.pid}", f"perf map of pid {self.pid} not read: {exc}"
        )

    def _truncate(self) -> None:
        if not self._truncated:
            self._truncated = True
            self.stats.perf_map_truncated += 1
        self.stats.warn_once(
            f"perf-map-truncated:{self.pid}",
            f"perf map of pid {self.pid} cut at {len(self.map)} entries, {self._offset} bytes "
            f"(limits {self.limits.entries} entries, {self.limits.total_bytes} bytes): "
            "JIT code named after that stays unnamed",
        )
