"""What the off-CPU and lock sources share: wait counts keyed by stacks.

Both programs store, when a wait begins, the waiting thread's stacks, and add
(1, nanoseconds) to a double-buffered counts map when it ends. Their stack
map is single, not double-buffered: a wait can span any number of drains,
so its stack ids must outlive them, and clearing the map while waits are in
flight would give them someone else's stack. So the map is never cleared;
ids are read once and cached here, and `counters()["stack_ids"]` tells a
long-running user when to recreate the source (past half the buckets,
collisions become likely and are counted). User stacks walked with CFI
(the default) live in the same way in `ustacks`, kernel stacks in `stacks`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.kernel import bcc_loader
from agent.model import RawSample
from agent.sources.program import ProgramSource, StackCache, base_cflags
from agent.sources.unwinding import raw_cflags


def common_cflags(
    limits: BpfLimits,
    *,
    filter_pids: bool,
    follow_forks: bool,
    self_pid: int,
    unwind: bool = False,
) -> list[str]:
    """The -D flags both wait programs take: a pure function of the options."""
    flags = base_cflags(limits, filter_pids=filter_pids, follow_forks=follow_forks, unwind=unwind)
    flags[5:5] = [f"-DPENDING_ENTRIES={limits.target_entries * 4}", f"-DSELF_PID={self_pid}"]
    if unwind:  # a wait before its process's tables are loaded keeps its raw stack
        flags += raw_cflags()
    return flags


class WaitSource(ProgramSource):
    """A SampleSource over a program with counts0/1, stacks, window, events
    (and, with the CFI walker, ustacks and the unwind maps).

    Subclasses name the program, give its flags, and turn one drained
    (key, value) pair into a RawSample.
    """

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        super().__init__(options, cache_dir)
        self._cache = StackCache(options.limits.stack_entries)

    def cflags(self, unwind: bool | None = None) -> list[str]:
        return common_cflags(
            self._options.limits,
            filter_pids=self._options.filter_pids,
            follow_forks=self._options.follow_forks,
            self_pid=os.getpid(),
            unwind=self._walker.wanted if unwind is None else unwind,
        )

    def sample(self, key: Any, value: Any) -> RawSample:
        raise NotImplementedError

    def loaded(self) -> None:
        self._cache.stacks = self._bpf["stacks"]
        self._cache.user_stacks = self._bpf["ustacks"] if self._walker.active else None
        self._cache.resolve = self._walker.resolve if self._walker.raw else None

    def drain(self) -> list[RawSample]:
        """Flip the counts' double buffer and read the retired half. The
        deferred stacks read are freed: each is one wait's own (its id
        comes from its raw record's unique hash), unlike the shared ones."""
        counts = self._bpf[f"counts{self.retire_window()}"]
        drained = counts.items_lookup_and_delete_batch()
        samples = [self.sample(k, v) for k, v in drained if not bcc_loader.is_loader(_pid(k))]
        self._cache.free_deferred()
        return samples

    def counters(self) -> dict[str, int]:
        out = super().counters()
        out["stack_ids"] = len(self._cache)
        return out


def _pid(key: Any) -> int:
    """The pid of an off-CPU key, or of a lock key's `base`."""
    return int(key.base.pid if hasattr(key, "base") else key.pid)
