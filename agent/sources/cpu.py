"""CPU samples from a perf-event BPF program (bpf/cpu.bpf.c).

Software `cpu-clock` events fire at the requested frequency on every CPU;
the program counts (pid, tid, comm, user stack, kernel stack) in a hash map.
Draining flips the program to the other half of a double buffer, so the
half being read is no longer written and can be emptied without losing the
samples taken meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.layout import Counter, ProcessEvent
from agent.model import RawKey, RawSample, RawStack
from agent.sources import bcc_loader

log = logging.getLogger("bpfprof.cpu")

PROGRAM = "cpu.bpf.c"


def bpf_cflags(
    limits: BpfLimits, *, filter_pids: bool, follow_forks: bool, include_idle: bool = False
) -> list[str]:
    """The -D flags that configure the program: a pure function of the options."""
    flags = [
        f"-DMAX_ENTRIES={limits.max_entries}",
        f"-DSTACK_ENTRIES={limits.stack_entries}",
        f"-DTARGET_ENTRIES={limits.target_entries}",
        f"-DSEEN_ENTRIES={limits.seen_entries}",
        f"-DEVENT_PAGES={limits.event_pages}",
    ]
    if filter_pids:
        flags.append("-DFILTER_PIDS=1")
    if follow_forks:
        flags.append("-DFOLLOW_FORKS=1")
    if include_idle:
        flags.append("-DINCLUDE_IDLE=1")
    return flags


def cflags_for(options: SourceOptions) -> list[str]:
    return bpf_cflags(
        options.limits, filter_pids=options.filter_pids, follow_forks=options.follow_forks
    )


def render_program(options: SourceOptions) -> str:
    """The exact program text that would be compiled, with its flags shown."""
    return bcc_loader.render(PROGRAM, cflags_for(options))


class CpuSource:
    """The CPU SampleSource. Construct, add_targets, start, then poll/drain."""

    def __init__(self, options: SourceOptions) -> None:
        self._options = options
        self._cflags = cflags_for(options)
        self._targets: list[int] = []
        self._bpf: Any = None
        self._window = 0
        self._on_new: Callable[[int], None] | None = None

    def add_targets(self, pids: Iterable[int]) -> None:
        self._targets.extend(pids)
        if self._bpf is not None:
            self._write_targets(self._targets)

    def start(self) -> None:
        self._bpf = bcc_loader.compile_program(PROGRAM, self._cflags)
        self._write_targets(self._targets)
        self._bpf["events"].open_ring_buffer(self._on_event)
        bcc = bcc_loader.import_bcc()
        self._bpf.attach_perf_event(
            ev_type=bcc.PerfType.SOFTWARE,
            ev_config=bcc.PerfSWConfig.CPU_CLOCK,
            fn_name="on_cpu_sample",
            sample_freq=self._options.frequency,
            cpu=-1,
        )

    def _write_targets(self, pids: Iterable[int]) -> None:
        table = self._bpf["targets"]
        for pid in pids:
            table[table.Key(pid)] = table.Leaf(1)

    def _on_event(self, _cpu: int, data: int, _size: int) -> None:
        event = ctypes.cast(data, ctypes.POINTER(ProcessEvent)).contents
        if self._on_new is not None:
            self._on_new(int(event.pid))

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        self._on_new = on_new_process
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> list[RawSample]:
        """Flip the double buffer and read out the half just retired."""
        old = self._window & 1
        self._window += 1
        window = self._bpf["window"]
        window[window.Key(0)] = window.Leaf(self._window)
        # A program that read the old window index a moment ago may still be
        # writing; programs run for microseconds, so a short pause suffices.
        time.sleep(0.002)
        counts = self._bpf[f"counts{old}"]
        stacks = self._bpf[f"stacks{old}"]
        drained = [(k, _as_int(v)) for k, v in counts.items_lookup_and_delete_batch()]
        return read_samples(drained, stacks)

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        return {c.name.lower(): int(table.sum(c.value).value) for c in Counter}

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def read_samples(drained: list[tuple[Any, int]], stacks: Any) -> list[RawSample]:
    """Turn drained (key, count) pairs into RawSamples, then free their stacks.

    Each stack id is read once however many keys share it; ids are deleted
    from the stack map afterwards so the next use of this half starts empty.
    """
    cache: dict[int, tuple[int, ...]] = {}

    def stack(stack_id: int) -> tuple[int, ...]:
        if stack_id < 0:
            return ()
        if stack_id not in cache:
            cache[stack_id] = read_stack(stacks, stack_id)
        return cache[stack_id]

    samples = []
    for key, count in drained:
        raw = RawStack(
            user=stack(key.user_stack_id),
            kernel=stack(key.kernel_stack_id),
            user_error=min(key.user_stack_id, 0),
            kernel_error=min(key.kernel_stack_id, 0),
        )
        comm = bytes(key.comm).split(b"\0", 1)[0].decode("utf-8", "replace")
        samples.append(RawSample(RawKey(key.pid, key.tid, comm, raw), (count,)))
    for stack_id in cache:
        with contextlib.suppress(KeyError):  # already gone: nothing to free
            del stacks[stacks.Key(stack_id)]
    return samples


def read_stack(stacks: Any, stack_id: int) -> tuple[int, ...]:
    """The instruction pointers of one stack, leaf first (zero-terminated)."""
    try:
        ips = stacks[stacks.Key(stack_id)].ip
    except KeyError:
        return ()
    out = []
    for ip in ips:
        if ip == 0:
            break
        out.append(int(ip))
    return tuple(out)


def _as_int(value: Any) -> int:
    """BCC yields batch values as ints but single lookups as ctypes objects."""
    return int(getattr(value, "value", value))
