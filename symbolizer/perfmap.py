"""JIT symbols from perf map files: /tmp/perf-PID.map.

Runtimes that generate machine code write one line per code region,
`START SIZE NAME` in hex (START with or without 0x): Node with
--perf-basic-prof, the JVM with a perf-map agent, CPython 3.12+ with
`-X perf` or PYTHONPERFSUPPORT=1 ("py::func:/path/file.py"), LuaJIT, .NET.

Two container details: the file lives in the process's own /tmp, so it is
read through /proc/PID/root; and its name carries the pid as the process
sees it, which differs from ours inside a pid namespace (the last field
of NSpid in /proc/PID/status).

The file only grows while the runtime runs: it is re-read when an
address misses and the file's size changed. Later lines win over earlier
ones for the same start (code regions get reused). Size is bounded.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from dataclasses import dataclass

MAX_PERF_MAP = 256 << 20


@dataclass(frozen=True)
class JitSymbol:
    name: str
    start: int
    size: int


class PerfMap:
    """A parsed perf map: sorted starts, bisect lookup."""

    def __init__(self, text: str) -> None:
        by_start: dict[int, tuple[int, str]] = {}
        for line in text.splitlines():
            parts = line.split(None, 2)
            if len(parts) != 3:
                continue
            try:
                start, size = int(parts[0], 16), int(parts[1], 16)
            except ValueError:
                continue
            by_start[start] = (size, parts[2].strip())
        self._starts = sorted(by_start)
        self._entries = [by_start[s] for s in self._starts]

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> JitSymbol | None:
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        size, name = self._entries[i]
        start = self._starts[i]
        return JitSymbol(name, start, size) if address < start + size else None


def namespace_pid(pid: int, proc_root: str = "/proc") -> int:
    """The pid as the process itself sees it (innermost NSpid), else `pid`."""
    try:
        with open(f"{proc_root}/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def perf_map_path(pid: int, proc_root: str = "/proc") -> str:
    return f"{proc_root}/{pid}/root/tmp/perf-{namespace_pid(pid, proc_root)}.map"


class PerfMapReader:
    """The perf map of one process, re-read when it has grown."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._size = -1
        self.map = PerfMap("")

    def refresh(self) -> bool:
        """Re-read if the file's size changed; False if there is no readable file."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != self._size:
                    data = f.read(MAX_PERF_MAP)
                    self.map = PerfMap(data.decode("utf-8", "replace"))
                    self._size = size
        except OSError:
            return False
        return True

    def lookup(self, address: int) -> JitSymbol | None:
        found = self.map.lookup(address)
        if found is None and self.refresh():
            found = self.map.lookup(address)
        return found
