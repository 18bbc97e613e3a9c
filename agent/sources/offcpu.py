"""Off-CPU time from sched:sched_switch (bpf/offcpu.bpf.c).

When a thread leaves a CPU its stacks are taken; when it runs again the
time it was away is added to them, so a profile shows where threads block
(I/O, sleeps, locks, page faults) and for how long. Threads whose blocks are
long (1 ms or more, judged by their previous block, a preemption aside)
take stacks every time;
threads that block briefly and often take them for about one block in
`wait_sampling`, each sample weighted by the inverse of its probability, so
totals stay unbiased and a context switch stays cheap (bpf/waits.h). Preemption counts
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


def offcpu_cflags(base: list[str], min_block_us: int, sampling: int = 1) -> list[str]:
    """The program's flags: the shared ones, the minimum block, and the
    largest weight of a sampled short block (1: every block takes stacks)."""
    return [*base, f"-DMIN_BLOCK_NS={min_block_us * 1000}", f"-DMAX_WEIGHT={sampling}"]


class OffCpuSource(WaitSource):
    """The off-CPU SampleSource; values are (blocked nanoseconds,)."""

    PROGRAM = PROGRAM

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        super().__init__(options, cache_dir)

    def cflags(self, unwind: bool | None = None) -> list[str]:
        options = self._options
        return offcpu_cflags(super().cflags(unwind), options.min_block_us, options.wait_sampling)

    def sample(self, key: Any, value: Any) -> RawSample:
        return RawSample(to_raw_key(key, self._cache), (int(value.total_ns),))

    def in_flight(self) -> set[int]:
        """The stacks of the threads off the CPU now, sampled."""
        named: set[int] = set()
        for leaf in self._bpf["start"].values():
            if leaf.ts and leaf.weight:
                named.update((int(leaf.key.user_stack_id), int(leaf.key.kernel_stack_id)))
        return named
