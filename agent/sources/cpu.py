"""CPU samples from a perf-event BPF program (bpf/cpu.bpf.c).

Software `cpu-clock` events fire at the requested frequency on every CPU;
the program counts (pid, tid, comm, user stack, kernel stack) in a hash map.
Draining flips the program to the other half of a double buffer, so the
half being read is no longer written and can be emptied without losing the
samples taken meanwhile.

User stacks are walked with the binaries' CFI (bpf/unwind.h) unless the
options ask for frame pointers only; if the kernel refuses the walker's
program, the frame-pointer one is loaded instead, with a warning
(agent/sources/unwinding.py, shared with the other sources). Each
process's tables are loaded when its first sample announces it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.config import BpfLimits, SourceOptions
from agent.kernel import bcc_loader, bpfsys
from agent.model import RawSample
from agent.sources.program import ProgramSource, StackCache, base_cflags, to_raw_key
from agent.sources.unwinding import Resolve, raw_cflags
from agent.unwind.loader import UnwindLoader

PROGRAM = "cpu.bpf.c"


def bpf_cflags(
    limits: BpfLimits,
    *,
    filter_pids: bool,
    follow_forks: bool,
    include_idle: bool = False,
    unwind: bool = False,
) -> list[str]:
    """The -D flags that configure the program: a pure function of the options."""
    flags = base_cflags(limits, filter_pids=filter_pids, follow_forks=follow_forks, unwind=unwind)
    if include_idle:
        flags.append("-DINCLUDE_IDLE=1")
    if unwind:  # each window frees its stack ids: a raw stack may have one of its own
        flags += raw_cflags()
    return flags


def cflags_for(options: SourceOptions, unwind: bool | None = None) -> list[str]:
    return bpf_cflags(
        options.limits,
        filter_pids=options.filter_pids,
        follow_forks=options.follow_forks,
        unwind=options.unwind == "dwarf" if unwind is None else unwind,
    )


class CpuSource(ProgramSource):
    """The CPU SampleSource. Construct, add_targets, start, then poll/drain."""

    PROGRAM = PROGRAM
    FUNCTIONS: ClassVar[dict[str, str]] = {"on_cpu_sample": "perf_event"}

    def cflags(self, unwind: bool | None = None) -> list[str]:
        return cflags_for(self._options, unwind)

    def attach(self) -> None:
        self._bpf.attach_perf_event(
            ev_type=bpfsys.PERF_TYPE_SOFTWARE,
            ev_config=bpfsys.PERF_COUNT_SW_CPU_CLOCK,
            fn_name="on_cpu_sample",
            sample_freq=self._options.frequency,
            cpu=-1,
        )

    def drain(self) -> list[RawSample]:
        """Flip the double buffer and read out the half just retired."""
        old = self.retire_window()
        counts = self._bpf[f"counts{old}"]
        stacks = self._bpf[f"stacks{old}"]
        user = self._bpf["ustacks"] if self._walker.active else None
        resolve = self._walker.resolve if self._walker.raw else None
        drained = [(k, _as_int(v)) for k, v in counts.items_lookup_and_delete_batch()]
        return read_samples(drained, stacks, user, resolve)

    @property
    def unwinder(self) -> UnwindLoader | None:
        return self._walker.loader


def read_samples(
    drained: list[tuple[Any, int]],
    stacks: Any,
    user_stacks: Any = None,
    resolve: Resolve | None = None,
) -> list[RawSample]:
    """Turn drained (key, count) pairs into RawSamples, then free their stacks.

    Each stack id is read once however many keys share it; ids are deleted
    from the stack maps afterwards so the next use of this half starts empty.
    Samples of bpfprof's own loader children are left out (see bcc_loader).
    With the CFI walker, user stack ids index `user_stacks` (`ustacks`) and
    a stack cut at the frame limit gets user_error -E2BIG, and a stack
    taken before its process's tables were loaded is walked by `resolve`.
    """
    cache = StackCache(0, stacks, user_stacks, resolve)
    samples = [RawSample(to_raw_key(key, cache), (count,)) for key, count in drained]
    cache.free()  # every id, even those of the samples dropped below
    return [s for s in samples if not bcc_loader.is_loader(s.key.pid)]


def _as_int(value: Any) -> int:
    """BCC yields batch values as ints but single lookups as ctypes objects."""
    return int(getattr(value, "value", value))
