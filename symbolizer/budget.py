"""One file's allowance of work: bytes, entries and seconds, shared by every reader.

The root agent parses files that any local user can map: a crafted file
can claim a 6 GB decompressed section, hold seven 500 MiB DWARF sections,
or a CFI program that yields millions of rows. No single per-section cap
stops that, so everything read from one binary (its symbols, its
MiniDebugInfo's inner ELF, its separate debug file, its DWARF sections,
its CFI rows) draws on one `Budget`:

- bytes: read from the file or produced by decompression, counted
  *before* the read or the decompression is done, so a hostile size never
  costs more than what is left;
- entries: symbols, FDEs, CFI rows, line-table rows, address ranges;
- seconds: CPU time of the parsing thread since the parse (re)started,
  checked at coarse points (per section, every few thousand entries),
  never per byte. CPU time, not wall time: a busy host slows a legitimate
  parse without making it more expensive, and a file must not lose its
  symbols because the machine was loaded when it was first seen; what an
  attacker can inflate (quadratic decoding, endless rows) is CPU.

Running out raises BudgetExceeded, an ElfError naming what ran out: the
caller counts it, remembers the file by identity and moves on.

The defaults were measured on the largest binaries of a Debian 12 host
(see docs/security.md): node (153k function symbols from .symtab and
.dynsym, 19 MB read, 1.0 s), libLLVM-15 (37k symbols, 4.3 MB, 0.9 s),
libc with its 8.6 MB debug file (12 MB in all); each fits with 3.4x or
more to spare. CFI tables have their own (agent/unwind/table.py): rows
up to what the walker's map can hold, and 30 s (libclang-cpp's 1.0M
rows take ~8.6 s).

`cancel_all()` (the agent's SIGTERM handler calls it) makes every budget
run out at its next check, so a long but legitimate parse does not hold
up the agent's exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_FILE_BYTES = 128 << 20  # read + decompressed, per file and its debug file
MAX_FILE_ENTRIES = 1 << 19  # symbols, DWARF units and ranges (node: 153k)
MAX_FILE_SECONDS = 5.0  # one parse of one file (node's symbols: ~1.0 s)
CHECK_EVERY = 4096  # entries between time checks in the hot loops

_cancelled = False


class ElfError(Exception):
    """The file is not a usable ELF: not ELF at all, truncated or corrupt."""


class BudgetExceeded(ElfError):
    """A file asked for more than its budget; the message names what ran out."""


def cancel_all() -> None:
    """Make every budget run out at its next check (the agent is stopping).

    A plain flag: set from a signal handler, read by the one thread that
    parses."""
    global _cancelled
    _cancelled = True


@dataclass
class Budget:
    """What one file may still cost. Not thread-safe: one parser at a time."""

    max_bytes: int = MAX_FILE_BYTES
    max_entries: int = MAX_FILE_ENTRIES
    max_seconds: float = MAX_FILE_SECONDS
    clock: Callable[[], float] = time.thread_time
    used_bytes: int = 0
    used_entries: int = 0
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def bytes_left(self) -> int:
        return max(0, self.max_bytes - self.used_bytes)

    def restart_clock(self) -> None:
        """A new parse of the same file (lazy DWARF, a unit's decoding):
        bytes and entries stay spent, the time starts again."""
        self.started = self.clock()

    def take_bytes(self, n: int, what: str) -> None:
        """Spend `n` bytes on `what`, or raise before anything is read."""
        if n < 0 or n > self.bytes_left:
            raise BudgetExceeded(
                f"{what}: {n} bytes would pass the file's budget of {self.max_bytes} bytes "
                f"({self.used_bytes} already spent)"
            )
        self.used_bytes += n
        self.check_time(what)

    def take_entries(self, n: int, what: str) -> None:
        """Spend `n` entries on `what` (and check the time)."""
        self.used_entries += n
        if self.used_entries > self.max_entries:
            raise BudgetExceeded(
                f"{what}: more than the file's budget of {self.max_entries} entries"
            )
        self.check_time(what)

    def check_time(self, what: str) -> None:
        if _cancelled:
            raise BudgetExceeded(f"{what}: stopped, the agent is exiting")
        if self.clock() - self.started > self.max_seconds:
            raise BudgetExceeded(f"{what}: over the file's time budget of {self.max_seconds:g} s")
