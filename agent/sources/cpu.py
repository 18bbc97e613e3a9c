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

import contextlib
import ctypes
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.layout import EVENT_MAPS_CHANGED, Counter, ProcessEvent
from agent.model import RawKey, RawSample, RawStack
from agent.sources import bcc_loader
from agent.sources.unwinding import Walker, read_unwound, unwind_cflags
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
    if unwind:
        flags += unwind_cflags(limits)
    return flags


def cflags_for(options: SourceOptions, unwind: bool | None = None) -> list[str]:
    return bpf_cflags(
        options.limits,
        filter_pids=options.filter_pids,
        follow_forks=options.follow_forks,
        unwind=options.unwind == "dwarf" if unwind is None else unwind,
    )


def render_program(options: SourceOptions) -> str:
    """The exact program text that would be compiled, with its flags shown."""
    return bcc_loader.render(PROGRAM, cflags_for(options))


class CpuSource:
    """The CPU SampleSource. Construct, add_targets, start, then poll/drain."""

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        self._options = options
        self._targets: list[int] = []
        self._bpf: Any = None
        self._window = 0
        self._on_new: Callable[[int], None] | None = None
        self._walker = Walker(options, cache_dir)

    def add_targets(self, pids: Iterable[int]) -> None:
        self._targets.extend(pids)
        if self._bpf is not None:
            self._write_targets(self._targets)

    def start(self) -> None:
        self._bpf = self._compile()
        # A held command is still a fork of bpfprof: its tables would be
        # bpfprof's own. Its real image is loaded on its first sample.
        self._walker.start([] if self._options.follow_forks else self._targets)
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

    def _compile(self) -> Any:
        """The walker's program if wanted and accepted, else the frame-pointer one."""
        return self._walker.compile(PROGRAM, lambda unwind: cflags_for(self._options, unwind))

    def _write_targets(self, pids: Iterable[int]) -> None:
        table = self._bpf["targets"]
        for pid in pids:
            table[table.Key(pid)] = table.Leaf(1)

    def _on_event(self, _cpu: int, data: int, _size: int) -> None:
        event = ctypes.cast(data, ctypes.POINTER(ProcessEvent)).contents
        pid = int(event.pid)
        # A changed process (dlopen) is also observed again: the symbolizer
        # needs the new mapping as much as the unwinder does.
        self._walker.announce(pid, self._on_new, changed=event.kind == EVENT_MAPS_CHANGED)

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
        user = self._bpf["ustacks"] if self._walker.active else None
        drained = [(k, _as_int(v)) for k, v in counts.items_lookup_and_delete_batch()]
        return read_samples(drained, stacks, user)

    @property
    def unwinding(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._walker.active

    @property
    def unwinder(self) -> UnwindLoader | None:
        return self._walker.loader

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        out = {c.name.lower(): int(table.sum(c.value).value) for c in Counter}
        out.update(self._walker.counters())
        return out

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def read_samples(
    drained: list[tuple[Any, int]], stacks: Any, user_stacks: Any = None
) -> list[RawSample]:
    """Turn drained (key, count) pairs into RawSamples, then free their stacks.

    Each stack id is read once however many keys share it; ids are deleted
    from the stack maps afterwards so the next use of this half starts empty.
    With the CFI walker, user stack ids index `user_stacks` (`ustacks`) and
    a stack cut at the frame limit gets user_error -E2BIG.
    """
    cache: dict[int, tuple[int, ...]] = {}
    user_cache: dict[int, tuple[tuple[int, ...], int]] = {}

    def stack(stack_id: int) -> tuple[int, ...]:
        if stack_id < 0:
            return ()
        if stack_id not in cache:
            cache[stack_id] = read_stack(stacks, stack_id)
        return cache[stack_id]

    def user(stack_id: int) -> tuple[tuple[int, ...], int]:
        if user_stacks is None:
            return stack(stack_id), min(stack_id, 0)
        if stack_id < 0:
            return (), stack_id
        if stack_id not in user_cache:
            user_cache[stack_id] = read_unwound(user_stacks, stack_id)
        return user_cache[stack_id]

    samples = []
    for key, count in drained:
        user_ips, user_error = user(key.user_stack_id)
        raw = RawStack(
            user=user_ips,
            kernel=stack(key.kernel_stack_id),
            user_error=user_error,
            kernel_error=min(key.kernel_stack_id, 0),
        )
        comm = bytes(key.comm).split(b"\0", 1)[0].decode("utf-8", "replace")
        samples.append(RawSample(RawKey(key.pid, key.tid, comm, raw), (count,)))
    for stack_id in cache:
        with contextlib.suppress(KeyError):  # already gone: nothing to free
            del stacks[stacks.Key(stack_id)]
    for stack_id in user_cache:
        with contextlib.suppress(KeyError):
            del user_stacks[user_stacks.Key(stack_id)]
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
