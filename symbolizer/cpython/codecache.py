"""Decoded code objects per (pid, address), checked against address reuse.

A hot Python function shows up in every sample, so decoding its code
object (three strings, a line table: five or more reads) once per sample
would dominate the host's cost. But a code object can be freed (a module
reloaded, an exec'd string, a lambda made per call) and its address
reused by another code object, so an address alone is not an identity.

On a hit the cache re-reads the code object's header (one read of ~150
bytes) and compares its fingerprint: the type, the filename, name,
qualname and line table pointers and co_firstlineno. Code objects are
immutable, so the same object always matches; a different object at the
same address differs in its string pointers (its strings are other
objects) unless it shares every one of them and its first line, in which
case its names and lines are the same anyway. A mismatch decodes afresh
(counted as `stale`). Keying by process start time would not catch reuse
within one process, which is the case that happens.

Bounded: at most `max_entries` (LRU). Failures are counted, never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from symbolizer.cpython.code import (
    BadCodeObject,
    CodeInfo,
    decode_code,
    fingerprint,
    header_span,
)
from symbolizer.cpython.layout import WalkLayout
from symbolizer.cpython.memory import MemoryReadError, ProcessMemory

MAX_ENTRIES = 8192


@dataclass
class CodeCacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0  # the address held another code object than cached
    errors: int = 0  # unreadable or not a code object
    evictions: int = 0


class CodeCache:
    """CodeInfo per (pid, code address), LRU-bounded, reuse-checked."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.stats = CodeCacheStats()
        self._entries: OrderedDict[tuple[int, int], tuple[tuple[int, ...], CodeInfo]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, mem: ProcessMemory, layout: WalkLayout, code_type: int, address: int) -> CodeInfo:
        """The code object at `address` in `mem`'s process; raises (and
        counts) MemoryReadError or BadCodeObject."""
        key = (mem.pid, address)
        try:
            header = mem.read(address, header_span(layout))
            mark = fingerprint(layout, header)
            cached = self._entries.get(key)
            if cached is not None and cached[0] == mark:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return cached[1]
            info = decode_code(mem, layout, code_type, header)
        except (MemoryReadError, BadCodeObject):
            self.stats.errors += 1
            raise
        if cached is None:
            self.stats.misses += 1
        else:
            self.stats.stale += 1
        self._put(key, mark, info)
        return info

    def peek(self, pid: int, address: int) -> CodeInfo | None:
        """The entry last decoded for (pid, address), without reading the
        process (no re-check: for a process that is gone, or a replay)."""
        cached = self._entries.get((pid, address))
        return cached[1] if cached is not None else None

    def put(self, pid: int, address: int, info: CodeInfo) -> None:
        """Hold `info` for (pid, address) with no fingerprint: the next `get`
        decodes afresh; `peek` answers it (a replay's saved names)."""
        self._put((pid, address), (), info)

    def entries(self, pid: int) -> dict[int, CodeInfo]:
        """Every code object held for `pid`, by address (a capture saves them)."""
        return {k[1]: v[1] for k, v in self._entries.items() if k[0] == pid}

    def forget(self, pid: int) -> None:
        """Drop a process's entries (it exited or exec'd)."""
        for key in [k for k in self._entries if k[0] == pid]:
            del self._entries[key]

    def _put(self, key: tuple[int, int], mark: tuple[int, ...], info: CodeInfo) -> None:
        self._entries[key] = (mark, info)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
