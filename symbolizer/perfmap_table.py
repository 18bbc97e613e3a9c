"""A perf map's entries: parsed from a stream, kept compact, looked up by bisect.

A map can hold a million lines (a JVM or a long-lived Node process) and
another user writes it, so nothing here is proportional to more than what
is kept: lines are parsed one at a time from the file object (never the
whole text in memory), each kept entry costs 28 bytes in arrays plus its
name's bytes in one shared buffer, and a line longer than the line limit
is skipped without being held.

Later lines win over earlier ones for the same start (code regions are
reused). Entries are kept in arrival order in three arrays (start, size,
name); lookups go through sorted runs of indices into them. Each batch
read from a growing file becomes a run, and runs of similar length are
merged (as in a log-structured merge tree) up to MAX_MERGED entries: a
growing map never re-sorts everything at each refresh, and no merge holds
about 20 MiB of Python integers at once (sorting a million indices by
start took 80 MiB and half a second), at the price of up to about
2n/MAX_MERGED + log2(MAX_MERGED) runs to bisect per lookup. Sorting indices (ties keep
their order: Python's sort is stable) and comparing the indices on equal
starts gives "the later line wins" for free.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

MAX_LINE = 4096  # longer lines are skipped: no runtime writes a name that long
_U64 = 1 << 64
_CLOCK_EVERY = 1024  # lines between two looks at the clock
MAX_MERGED = 1 << 18  # no merge makes a run larger than this


@dataclass(frozen=True)
class JitSymbol:
    name: str
    start: int
    size: int


def parse_line(line: bytes) -> tuple[int, int, bytes] | None:
    """`START SIZE NAME` (hex, 0x optional) -> (start, size, name); None if not."""
    parts = line.split(None, 2)
    if len(parts) != 3:
        return None
    try:
        start, size = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None
    name = parts[2].strip()
    if not name or not 0 <= start < _U64 or not 0 < size < _U64:
        return None
    return start, size, name


def _name_ref(offset: int, length: int) -> int:
    """Where a name lies in the names buffer, as one integer."""
    return offset << 16 | length  # length <= MAX_LINE + 1 < 2**16


class PerfMap:
    """The kept entries of one perf map."""

    def __init__(self, text: str = "") -> None:
        self._names = bytearray()
        self._starts = array("Q")
        self._sizes = array("Q")
        self._name_refs = array("Q")
        self._runs: list[array[int]] = []  # each: indices sorted by start
        if text:
            self.extend(filter(None, map(parse_line, text.encode().splitlines())))

    def __len__(self) -> int:
        return len(self._starts)

    def extend(self, entries: Iterable[tuple[int, int, bytes]]) -> None:
        """Add entries in file order: later ones win over earlier and over
        those already kept."""
        for entry in entries:
            self.append(*entry)
        self.commit()

    def append(self, start: int, size: int, name: bytes) -> None:
        """Add one entry; it is found by lookup() after the next commit()."""
        self._starts.append(start)
        self._sizes.append(size)
        self._name_refs.append(_name_ref(len(self._names), len(name)))
        self._names += name

    def commit(self) -> None:
        """Make the entries appended since the last commit one sorted run."""
        first = sum(map(len, self._runs))
        if first == len(self._starts):
            return
        key = self._starts.__getitem__
        run = array("I", sorted(range(first, len(self._starts)), key=key))
        while self._runs and self._mergeable(self._runs[-1], run):
            older = self._runs.pop()  # all its indices are lower: ties keep order
            run = array("I", sorted(older + run, key=key))
        self._runs.append(run)

    @staticmethod
    def _mergeable(older: array[int], newer: array[int]) -> bool:
        """Sizes stay decreasing by about half from run to run, up to MAX_MERGED."""
        return len(older) <= 2 * len(newer) and len(older) + len(newer) <= MAX_MERGED

    def lookup(self, address: int) -> JitSymbol | None:
        key = self._starts.__getitem__
        best = -1
        for run in self._runs:
            i = bisect_right(run, address, key=key) - 1
            if i >= 0 and (best < 0 or (key(run[i]), run[i]) > (key(best), best)):
                best = run[i]
        if best < 0:
            return None
        start, size = self._starts[best], self._sizes[best]
        if address >= start + size:
            return None
        ref = self._name_refs[best]
        name = self._names[ref >> 16 : (ref >> 16) + (ref & 0xFFFF)]
        return JitSymbol(name.decode("utf-8", "replace"), start, size)


@dataclass
class Chunk:
    """What one bounded read of a stream gave."""

    entries: int = 0  # entries appended
    consumed: int = 0  # bytes parsed (a partial last line is not)
    skipping: bool = False  # inside an over-long line: drop bytes up to its newline
    stopped: str = ""  # "" (end of data), "bytes", "entries" or "time"


def read_entries(
    f: BinaryIO,
    into: PerfMap,
    *,
    max_bytes: int,
    max_entries: int,
    skipping: bool = False,
    deadline: float = float("inf"),
    clock: Callable[[], float] | None = None,
    max_line: int = MAX_LINE,
) -> Chunk:
    """Parse lines from `f`'s position and append them `into` a map (then
    commit them): at most about `max_bytes` (one line more at worst),
    `max_entries` entries, and until `deadline` on `clock`.

    A last line without its newline is left unread (the writer is still
    writing it): `consumed` stops before it, so the next read starts there.
    """
    out = Chunk(skipping=skipping, stopped="bytes")
    lines = 0
    while out.consumed < max_bytes:
        lines += 1
        if out.entries >= max_entries:
            out.stopped = "entries"
            break
        if clock is not None and lines % _CLOCK_EVERY == 0 and clock() >= deadline:
            out.stopped = "time"
            break
        line = f.readline(max_line + 1)
        complete = line.endswith(b"\n")
        if not complete and len(line) <= max_line:
            out.stopped = ""  # end of data, or a line still being written
            break
        out.consumed += len(line)
        if out.skipping or not complete:  # (the tail of) an over-long line
            out.skipping = not complete
            continue
        entry = parse_line(line)
        if entry is not None:
            into.append(*entry)
            out.entries += 1
    into.commit()
    return out
