"""Off-CPU time from sched:sched_switch (bpf/offcpu.bpf.c).

Each time a thread leaves a CPU its stacks are stored; when it runs again
the time it was away is added to them, so a profile shows where threads
block (I/O, sleeps, locks, page faults) and for how long. Preemption counts
too: a runnable thread waiting for a CPU is off it all the same. The idle
task and bpfprof itself are never profiled (the agent's own drain and poll
sleeps would otherwise be most of a whole-system profile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.config import SourceOptions
from agent.model import RawSample
from agent.sources.program import to_raw_key
from agent.sources.waits import WaitSource

PROGRAM = "offcpu.bpf.c"


def offcpu_cflags(base: list[str], min_block_us: int) -> list[str]:
    """The program's flags: the shared ones plus the minimum block."""
    return [*base, f"-DMIN_BLOCK_NS={min_block_us * 1000}"]


class OffCpuSource(WaitSource):
    """The off-CPU SampleSource; values are (blocked nanoseconds,)."""

    PROGRAM = PROGRAM

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        super().__init__(options, cache_dir)

    def cflags(self, unwind: bool | None = None) -> list[str]:
        return offcpu_cflags(super().cflags(unwind), self._options.min_block_us)

    def sample(self, key: Any, value: Any) -> RawSample:
        return RawSample(to_raw_key(key, self._cache), (int(value.total_ns),))
