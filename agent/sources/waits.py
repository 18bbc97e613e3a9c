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

import ctypes
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.layout import EVENT_MAPS_CHANGED, Counter, ProcessEvent
from agent.model import RawKey, RawSample, RawStack
from agent.sources import bcc_loader
from agent.sources.cpu import read_stack
from agent.sources.unwinding import Walker, read_unwound, unwind_cflags


def common_cflags(
    limits: BpfLimits,
    *,
    filter_pids: bool,
    follow_forks: bool,
    self_pid: int,
    unwind: bool = False,
) -> list[str]:
    """The -D flags both wait programs take: a pure function of the options."""
    flags = [
        f"-DMAX_ENTRIES={limits.max_entries}",
        f"-DSTACK_ENTRIES={limits.stack_entries}",
        f"-DTARGET_ENTRIES={limits.target_entries}",
        f"-DSEEN_ENTRIES={limits.seen_entries}",
        f"-DEVENT_PAGES={limits.event_pages}",
        f"-DPENDING_ENTRIES={limits.target_entries * 4}",
        f"-DSELF_PID={self_pid}",
    ]
    if filter_pids:
        flags.append("-DFILTER_PIDS=1")
    if follow_forks:
        flags.append("-DFOLLOW_FORKS=1")
    if unwind:
        flags += unwind_cflags(limits)
    return flags


class StackCache:
    """Stack ids to instruction pointers, read from the maps once each.

    `stacks` is the program's stack map; `user_stacks` its `ustacks` when
    user stacks are walked with CFI (their ids are another map's, so the
    two are cached apart), else None: user ids index `stacks` too.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stacks: Any = None
        self.user_stacks: Any = None
        self._kernel: dict[int, tuple[int, ...]] = {}
        self._user: dict[int, tuple[tuple[int, ...], int]] = {}

    def __len__(self) -> int:
        return len(self._kernel) + len(self._user)

    def kernel(self, stack_id: int) -> tuple[int, ...]:
        if stack_id < 0:
            return ()
        ips = self._kernel.get(stack_id)
        if ips is None:
            ips = self._kernel[stack_id] = read_stack(self.stacks, stack_id)
        return ips

    def user(self, stack_id: int) -> tuple[tuple[int, ...], int]:
        """(ips, user_error) of a user stack id."""
        if self.user_stacks is None:
            return self.kernel(stack_id), min(stack_id, 0)
        if stack_id < 0:
            return (), stack_id
        got = self._user.get(stack_id)
        if got is None:
            got = self._user[stack_id] = read_unwound(self.user_stacks, stack_id)
        return got


def to_raw_key(key: Any, cache: StackCache, tag: str = "") -> RawKey:
    """A struct sample_key (as BCC returns it) to the neutral RawKey."""
    user, user_error = cache.user(key.user_stack_id)
    raw = RawStack(
        user=user,
        kernel=cache.kernel(key.kernel_stack_id),
        user_error=user_error,
        kernel_error=min(key.kernel_stack_id, 0),
    )
    comm = bytes(key.comm).split(b"\0", 1)[0].decode("utf-8", "replace")
    return RawKey(key.pid, key.tid, comm, raw, tag)


class WaitSource:
    """A SampleSource over a program with counts0/1, stacks, window, events
    (and, with the CFI walker, ustacks and the unwind maps).

    Subclasses name the program, give its flags, attach it, and turn one
    drained (key, value) pair into a RawSample.
    """

    PROGRAM = ""

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        self._options = options
        self._targets: list[int] = []
        self._bpf: Any = None
        self._window = 0
        self._on_new: Callable[[int], None] | None = None
        self._cache = StackCache(options.limits.stack_entries)
        self._walker = Walker(options, cache_dir)

    # -- what subclasses provide ------------------------------------------

    def cflags(self, unwind: bool | None = None) -> list[str]:
        """The -D flags; `unwind` None: as the options ask."""
        return common_cflags(
            self._options.limits,
            filter_pids=self._options.filter_pids,
            follow_forks=self._options.follow_forks,
            self_pid=os.getpid(),
            unwind=self._walker.wanted if unwind is None else unwind,
        )

    def attach(self) -> None:
        """Tracepoints are attached by BCC from TRACEPOINT_PROBE on load."""

    def sample(self, key: Any, value: Any) -> RawSample:
        raise NotImplementedError

    # -- the SampleSource protocol -----------------------------------------

    def render(self) -> str:
        return bcc_loader.render(self.PROGRAM, self.cflags())

    @property
    def unwinding(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._walker.active

    def add_targets(self, pids: Iterable[int]) -> None:
        self._targets.extend(pids)
        if self._bpf is not None:
            self._write_targets(self._targets)

    def start(self) -> None:
        self._bpf = self._compile()
        self._cache.stacks = self._bpf["stacks"]
        self._cache.user_stacks = self._bpf["ustacks"] if self._walker.active else None
        # A held command is still a fork of bpfprof: its tables would be
        # bpfprof's own. Its real image is loaded on its first sample.
        self._walker.start([] if self._options.follow_forks else self._targets)
        self._write_targets(self._targets)
        self._bpf["events"].open_ring_buffer(self._on_event)
        self.attach()

    def _compile(self) -> Any:
        """The walker's build if wanted and accepted, else the frame-pointer one."""
        return self._walker.compile(self.PROGRAM, self.cflags)

    def _write_targets(self, pids: Iterable[int]) -> None:
        table = self._bpf["targets"]
        for pid in pids:
            table[table.Key(pid)] = table.Leaf(1)

    def _on_event(self, _cpu: int, data: int, _size: int) -> None:
        event = ctypes.cast(data, ctypes.POINTER(ProcessEvent)).contents
        pid = int(event.pid)
        self._walker.announce(pid, self._on_new, changed=event.kind == EVENT_MAPS_CHANGED)

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        self._on_new = on_new_process
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> list[RawSample]:
        """Flip the counts' double buffer and read the retired half."""
        old = self._window & 1
        self._window += 1
        window = self._bpf["window"]
        window[window.Key(0)] = window.Leaf(self._window)
        time.sleep(0.002)  # let programs that read the old index finish
        counts = self._bpf[f"counts{old}"]
        return [self.sample(k, v) for k, v in counts.items_lookup_and_delete_batch()]

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        out = {c.name.lower(): int(table.sum(c.value).value) for c in Counter}
        out["stack_ids"] = len(self._cache)
        out.update(self._walker.counters())
        return out

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
