"""Self-metrics of the symbolizer and its once-per-key warnings.

A host profiled for days meets the same unreadable binary or vanished pid
again and again: each is counted every time but logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger("bpfprof.symbolizer")
_MAX_WARNED_KEYS = 4096  # pids come and go: forget old keys rather than grow forever


@dataclass
class SymbolizerStats:
    """Counters; the agent exports them as self-metrics."""

    observed: int = 0  # observe() calls that read a maps text
    vanished_pids: int = 0  # pids whose /proc entry was gone (or hidden) at observe()
    exited_unread: int = 0  # processes that exited before their maps or a file could be read
    unreadable_files: int = 0  # mapped files that could not be opened
    refused_files: int = 0  # files refused: not the mapped inode, not a regular file
    bad_elf: int = 0  # files that opened but are not usable ELF
    budget_exceeded: int = 0  # files (or their DWARF) over the per-file budget: bombs
    tables_loaded: int = 0  # symbol tables parsed
    table_cache_hits: int = 0  # tables found in the cache instead
    resolved: int = 0  # addresses given a function name
    misses: int = 0  # addresses left unsymbolized
    kernel_unavailable: int = 0  # kallsyms unreadable or empty
    kallsyms_hidden: int = 0  # kallsyms read with every address 0 (kptr_restrict, no CAP_SYSLOG)
    bad_dwarf: int = 0  # debug files or DWARF units that could not be used
    disk_cache_hits: int = 0  # tables restored from the on-disk cache
    perf_map_refused: int = 0  # pids whose perf map was a symlink, not regular, or not theirs
    perf_map_truncated: int = 0  # pids whose perf map reached its byte or entry bound
    _warned: dict[str, None] = field(default_factory=dict, repr=False)

    def warn_once(self, key: str, message: str) -> None:
        """Log `message` the first time `key` is seen."""
        if key in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED_KEYS:
            del self._warned[next(iter(self._warned))]
        self._warned[key] = None
        logger.warning("%s", message)
