"""What the CPU, off-CPU and lock sources share: one BPF program with a
`targets` filter, a double-buffered `counts0/1` map flipped by `window`, a
ring buffer of process events, per-CPU `counters`, and stack maps read into
RawKeys. Each source names its program, gives its flags, attaches it and
turns drained counts into RawSamples.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from agent.config import BpfLimits, SourceOptions
from agent.kernel import bcc_loader
from agent.kernel.layout import EVENT_MAPS_CHANGED, Counter, ProcessEvent
from agent.kernel.loaded import BpfProgram
from agent.model import RawKey, RawStack
from agent.sources.unwinding import (
    Resolve,
    Walker,
    first_build_flags,
    read_unwound,
    unwind_cflags,
)


def base_cflags(
    limits: BpfLimits, *, filter_pids: bool, follow_forks: bool, unwind: bool
) -> list[str]:
    """The -D flags every such program takes: map sizes, filter, walker."""
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
    if unwind:
        flags += unwind_cflags(limits)
    return flags


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


class StackCache:
    """Stack ids to instruction pointers, read from the maps once each.

    `stacks` is the program's stack map; `user_stacks` its `ustacks` when
    user stacks are walked with CFI (their ids are another map's, so the
    two are cached apart), else None: user ids index `stacks` too.
    `resolve` walks deferred stacks from their raw copies (Walker.resolve).
    """

    def __init__(
        self,
        capacity: int,
        stacks: Any = None,
        user_stacks: Any = None,
        resolve: Resolve | None = None,
    ) -> None:
        self.capacity = capacity
        self.stacks = stacks
        self.user_stacks = user_stacks
        self.resolve = resolve
        self._kernel: dict[int, tuple[int, ...]] = {}
        self._user: dict[int, tuple[tuple[int, ...], int]] = {}
        self._deferred: list[int] = []  # ids of deferred stacks read (read_unwound)

    def __len__(self) -> int:
        return len(self._kernel) + len(self._user)

    def kernel(self, stack_id: int) -> tuple[tuple[int, ...], int]:
        """(ips, kernel_error) of a kernel stack id."""
        if stack_id < 0:
            return (), stack_id
        ips = self._kernel.get(stack_id)
        if ips is None:
            ips = self._kernel[stack_id] = read_stack(self.stacks, stack_id)
        return ips, 0

    def user(self, stack_id: int) -> tuple[tuple[int, ...], int]:
        """(ips, user_error) of a user stack id."""
        if self.user_stacks is None:
            return self.kernel(stack_id)
        if stack_id < 0:
            return (), stack_id
        got = self._user.get(stack_id)
        if got is None:
            got = read_unwound(self.user_stacks, stack_id, self.resolve, self._deferred)
            self._user[stack_id] = got
        return got

    def free(self) -> None:
        """Delete every id read from its map (a retired half of a double
        buffer starts empty) and forget them."""
        for table, ids in ((self.stacks, self._kernel), (self.user_stacks, self._user)):
            for stack_id in ids:
                with contextlib.suppress(KeyError):  # already gone: nothing to free
                    del table[table.Key(stack_id)]
            ids.clear()
        self._deferred.clear()


class Stacks(Protocol):
    """What to_raw_key reads stack ids through: (ips, -errno or 0)."""

    def user(self, stack_id: int) -> tuple[tuple[int, ...], int]: ...
    def kernel(self, stack_id: int) -> tuple[tuple[int, ...], int]: ...


def to_raw_key(key: Any, cache: Stacks, tag: str = "") -> RawKey:
    """A struct sample_key (as BCC returns it) to the neutral RawKey."""
    user, user_error = cache.user(key.user_stack_id)
    kernel, kernel_error = cache.kernel(key.kernel_stack_id)
    raw = RawStack(user=user, kernel=kernel, user_error=user_error, kernel_error=kernel_error)
    comm = bytes(key.comm).split(b"\0", 1)[0].decode("utf-8", "replace")
    return RawKey(key.pid, key.tid, comm, raw, tag)


class ProgramSource:
    """The SampleSource plumbing around one such program. Subclasses give
    PROGRAM, cflags(unwind), attach(), and drain() (using retire_window())."""

    PROGRAM = ""
    # the program type of each function BCC does not attach on load
    FUNCTIONS: ClassVar[dict[str, str]] = {}

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        self._options = options
        self._targets: list[int] = []
        self._loaded: BpfProgram | None = None
        self._window = 0
        self._on_new: Callable[[int], None] | None = None
        self._walker = Walker(options, cache_dir)

    @property
    def _bpf(self) -> BpfProgram:
        """The loaded program, for this class and its subclasses; using it
        before start() is a bug."""
        if self._loaded is None:
            raise RuntimeError(f"{type(self).__name__}: program used before start()")
        return self._loaded

    def cflags(self, unwind: bool | None = None) -> list[str]:
        """The -D flags; `unwind` None: as the options ask."""
        raise NotImplementedError

    def attach(self) -> None:
        """Attach what BCC did not attach on load (TRACEPOINT_PROBEs it does)."""

    def loaded(self) -> None:
        """Called once the program is loaded, before anything is attached."""

    def render(self) -> str:
        """The exact program text that would be compiled, with its flags shown."""
        return bcc_loader.render(self.PROGRAM, self.cflags() + first_build_flags(self._options))

    @property
    def unwinding(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._walker.active

    def python_codes(self) -> list[tuple[int, int]]:
        """New (pid, code object address) pairs of Python frames since the
        last call (agent.sources.base.PythonCodeSource)."""
        return self._walker.python_codes() if self._loaded is not None else []

    def add_targets(self, pids: Iterable[int]) -> None:
        self._targets.extend(pids)
        if self._loaded is not None:
            self._write_targets(self._targets)

    def start(self) -> None:
        self._loaded = self._compile()
        self.loaded()
        # A held command is still a fork of bpfprof: its tables would be
        # bpfprof's own. Its real image is loaded on its first sample.
        self._walker.start([] if self._options.follow_forks else self._targets)
        self._write_targets(self._targets)
        self._bpf["events"].open_ring_buffer(self._on_event)
        self._walker.open_rings(self._bpf)
        self.attach()

    def _compile(self) -> BpfProgram:
        """The walker's build if wanted and accepted, else the frame-pointer one."""
        return self._walker.compile(self.PROGRAM, self.cflags, self.FUNCTIONS)

    def _write_targets(self, pids: Iterable[int]) -> None:
        table = self._bpf["targets"]
        for pid in pids:
            table[table.Key(pid)] = table.Leaf(1)

    def _on_event(self, _cpu: int, data: int, _size: int) -> None:
        event = ctypes.cast(data, ctypes.POINTER(ProcessEvent)).contents
        # A changed process (dlopen) is also observed again: the symbolizer
        # needs the new mapping as much as the unwinder does.
        changed = event.kind == EVENT_MAPS_CHANGED
        self._walker.announce(int(event.pid), self._on_new, changed=changed)

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        self._on_new = on_new_process
        self._bpf.ring_buffer_poll(timeout_ms)
        self._walker.poll()

    def retire_window(self) -> int:
        """Flip the double buffer; the index of the half just retired."""
        old = self._window & 1
        self._window += 1
        window = self._bpf["window"]
        window[window.Key(0)] = window.Leaf(self._window)
        # A program that read the old window index a moment ago may still be
        # writing; programs run for microseconds, so a short pause suffices.
        time.sleep(0.002)
        self._walker.begin_drain()
        return old

    def counters(self) -> dict[str, int]:
        table = self._bpf["counters"]
        out = {c.name.lower(): int(table.sum(c.value).value) for c in Counter}
        out.update(self._walker.counters())
        return out

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded.cleanup()
            self._loaded = None
