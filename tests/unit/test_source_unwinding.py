"""The walker as the off-CPU, lock and allocation sources use it, without
BPF: which build each option compiles, the fallback, reading walked stacks,
and the allocation source's exec and reload records."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import BpfLimits, SourceOptions
from agent.errors import SetupError
from agent.kernel import bcc_loader
from agent.kernel.layout import (
    ALLOC_EVENT_ALLOC,
    ALLOC_EVENT_EXEC,
    ALLOC_EVENT_MAPS_CHANGED,
    AllocEvent,
    AllocFreeEvent,
    SampleKey,
)
from agent.registry import create_source, render_program
from agent.sources.alloc import AllocSource, alloc_cflags
from agent.sources.program import StackCache, to_raw_key
from agent.sources.unwinding import Walker
from agent.sources.waits import StackGenerations
from agent.unwind.layout import E2BIG, STACK_TRUNCATED


@dataclass
class FakeTable:
    """A BCC table: Key() wraps an id, [] reads."""

    items: dict[int, Any] = field(default_factory=dict)
    reads: int = 0

    @staticmethod
    def Key(i: int) -> int:
        return i

    def __getitem__(self, key: int) -> Any:
        self.reads += 1
        return self.items[key]


@dataclass
class FakeProgram:
    """What a loaded program offers the sources: tables by name, cleanup."""

    flags: list[str]
    tables: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.tables.setdefault(name, FakeTable())

    def cleanup(self) -> None:
        pass


def compiler(refuse_walker: bool, tried: list[list[str]]) -> Any:
    def compile_program(name: str, flags: list[str], functions: Any = None) -> FakeProgram:
        tried.append(flags)
        if refuse_walker and "-DUNWIND_DWARF=1" in flags:
            raise SetupError(f"cannot compile {name}: program too large")
        return FakeProgram(flags)

    return compile_program


@pytest.mark.parametrize("profile_type", ["offcpu", "lock", "alloc"])
@pytest.mark.parametrize(
    ("unwind", "refuse", "builds", "walked"),
    [
        ("dwarf", False, 1, True),  # the walker by default
        ("dwarf", True, 2, False),  # refused: the frame-pointer build
        ("fp", False, 1, False),  # --unwind fp: never tried
    ],
)
def test_each_source_compiles_the_walker_unless_told_or_refused(
    monkeypatch: pytest.MonkeyPatch,
    profile_type: str,
    unwind: str,
    refuse: bool,
    builds: int,
    walked: bool,
) -> None:
    tried: list[list[str]] = []
    monkeypatch.setattr(bcc_loader, "compile_program", compiler(refuse, tried))
    source: Any = create_source(profile_type, SourceOptions(unwind=unwind, python=False))
    walker: Walker = source._walker
    program = source._compile()
    assert len(tried) == builds and walker.active is walked and source.unwinding is walked
    assert ("-DUNWIND_DWARF=1" in program.flags) is walked
    assert walker.counters() == {}  # no loader before start()


PY_FLAGS = ["-DPYTHON_FRAMES=1", "-DTASK_FSBASE_OFFSET=3128"]


@pytest.mark.parametrize("profile_type", ["cpu", "offcpu", "lock", "alloc"])
@pytest.mark.parametrize(
    ("refused", "builds", "walked", "python"),
    [
        ((), 1, True, True),  # the walker with Python frames by default
        (("-DPYTHON_FRAMES=1",), 2, True, False),  # too large with them: the walker alone
        (("-DUNWIND_DWARF=1",), 3, False, False),  # the walker refused: frame pointers
    ],
)
def test_python_frames_are_tried_first_and_given_up_alone(
    monkeypatch: pytest.MonkeyPatch,
    profile_type: str,
    refused: tuple[str, ...],
    builds: int,
    walked: bool,
    python: bool,
) -> None:
    import agent.sources.unwinding as unwinding

    tried: list[list[str]] = []

    def compile_program(name: str, flags: list[str], functions: Any = None) -> FakeProgram:
        tried.append(flags)
        if any(f in flags for f in refused):
            raise SetupError(f"cannot compile {name}: program too large")
        return FakeProgram(flags)

    monkeypatch.setattr(bcc_loader, "compile_program", compile_program)
    monkeypatch.setattr(unwinding, "python_frames_cflags", lambda limits: PY_FLAGS)
    source: Any = create_source(profile_type, SourceOptions())
    walker: Walker = source._walker
    program = source._compile()
    assert len(tried) == builds
    assert walker.active is walked and walker.python_active is python
    assert ("-DPYTHON_FRAMES=1" in program.flags) is python
    assert "-DPYTHON_FRAMES=1" in tried[0]


def test_the_option_picks_the_flags() -> None:
    assert "-DUNWIND_DWARF=1" in alloc_cflags(SourceOptions())
    assert not any("UNWIND" in f for f in alloc_cflags(SourceOptions(unwind="fp")))
    wait = create_source("offcpu", SourceOptions(unwind="fp"))
    assert not any("UNWIND" in f for f in wait.cflags())  # type: ignore[attr-defined]
    lock = create_source("lock", SourceOptions(limits=BpfLimits(unwind_rows=4096)))
    assert "-DUNWIND_ROWS=4096" in lock.cflags()  # type: ignore[attr-defined]


@pytest.mark.parametrize("profile_type", ["cpu", "offcpu", "lock", "alloc"])
def test_print_bpf_renders_every_type_with_the_walker(profile_type: str) -> None:
    text = render_program(profile_type, SourceOptions())
    assert "#define UNWIND_DWARF 1" in text and "unwind_user_stack(" in text
    assert '#include "unwind.h"' not in text  # pasted, as BCC needs it
    assert "#define UNWIND_DWARF" not in render_program(profile_type, SourceOptions(unwind="fp"))


@pytest.mark.parametrize("profile_type", ["cpu", "offcpu", "lock", "alloc"])
def test_print_bpf_shows_the_python_build_tried_first(
    monkeypatch: pytest.MonkeyPatch, profile_type: str
) -> None:
    import agent.sources.unwinding as unwinding

    monkeypatch.setattr(unwinding, "python_frames_cflags", lambda limits: PY_FLAGS)
    assert "#define PYTHON_FRAMES 1" in render_program(profile_type, SourceOptions())
    for off in (SourceOptions(python=False), SourceOptions(unwind="fp")):
        assert "#define PYTHON_FRAMES" not in render_program(profile_type, off)


def sample_key(user: int, kernel: int) -> SampleKey:
    return SampleKey(pid=5, tid=6, user_stack_id=user, kernel_stack_id=kernel, comm=b"prog")


def test_walked_user_stacks_and_kernel_stacks_are_read_from_their_own_maps() -> None:
    cache = StackCache(16)
    cache.stacks = FakeTable({1: SimpleNamespace(ip=[0xFFFF0001, 0])})
    cache.user_stacks = FakeTable(
        {
            1: SimpleNamespace(len=2, flags=0, ips=[0x401000, 0x402000, 0]),
            2: SimpleNamespace(len=1, flags=STACK_TRUNCATED, ips=[0x403000]),
        }
    )
    first = to_raw_key(sample_key(1, 1), cache)
    assert first.stack.user == (0x401000, 0x402000) and first.stack.kernel == (0xFFFF0001,)
    truncated = to_raw_key(sample_key(2, -14), cache, "mutex")
    assert truncated.stack.user_error == -E2BIG and truncated.tag == "mutex"
    assert to_raw_key(sample_key(-17, -14), cache).stack.user_error == -17
    to_raw_key(sample_key(1, 1), cache)  # cached: the maps are read once per id
    assert cache.user_stacks.reads == 2 and cache.stacks.reads == 1 and len(cache) == 3


def test_a_wait_programs_deferred_stacks_are_freed_once_read_and_shared_ones_kept() -> None:
    from agent.unwind.layout import STACK_DEFERRED

    class Deletable(FakeTable):
        def __delitem__(self, key: int) -> None:
            del self.items[key]

    cache = StackGenerations(64, stacks=(FakeTable({}), FakeTable({})))  # no move: 2 ids read
    cache.user_stacks = Deletable(
        {
            1: SimpleNamespace(len=1, flags=0, ips=[0x401000]),
            2: SimpleNamespace(len=1, flags=STACK_DEFERRED, ips=[0x7F0000001000], hash=99),
        }
    )
    cache.resolve = lambda h: ((0x7F0000001000, 0x401000), 0) if h == 99 else None
    assert to_raw_key(sample_key(2, -14), cache).stack.user == (0x7F0000001000, 0x401000)
    to_raw_key(sample_key(1, -14), cache)
    cache.after_drain()
    assert set(cache.user_stacks.items) == {1}  # the shared stack stays for later waits
    # the freed id's bucket may hold another stack next: read afresh, not from the cache
    cache.user_stacks.items[2] = SimpleNamespace(len=1, flags=0, ips=[0x402000])
    assert to_raw_key(sample_key(2, -14), cache).stack.user == (0x402000,)
    cache.after_drain()  # nothing deferred was read since: nothing freed
    assert set(cache.user_stacks.items) == {1, 2}


def test_with_frame_pointers_user_ids_index_the_stack_map() -> None:
    cache = StackCache(16)
    cache.stacks = FakeTable({4: SimpleNamespace(ip=[0x401000, 0])})
    raw = to_raw_key(sample_key(4, -14), cache)
    assert raw.stack.user == (0x401000,) and raw.stack.user_error == 0


def feed(source: AllocSource, record: ctypes.Structure) -> None:
    source._on_event(0, ctypes.addressof(record), ctypes.sizeof(record))


def alloc(pid: int, flags: int = 0) -> AllocEvent:
    ev = AllocEvent(kind=ALLOC_EVENT_ALLOC, pid=pid, addr=0x10, tid=pid, size=64, comm=b"p")
    ev.ips[0] = 0x401000
    ev.stack_bytes, ev.stack_flags = 8, flags
    return ev


def test_an_exec_announces_the_process_again_and_a_reload_is_counted() -> None:
    seen: list[int] = []
    source = AllocSource(SourceOptions())
    source._on_new = seen.append
    feed(source, alloc(9))
    feed(source, alloc(9))
    assert seen == [9]
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_EXEC, pid=9))
    feed(source, alloc(9))  # the new image's maps are read on its first sample
    assert seen == [9, 9]
    feed(source, AllocFreeEvent(kind=ALLOC_EVENT_MAPS_CHANGED, pid=9))
    assert seen == [9, 9, 9] and source._walker.maps_reloaded == 1


def test_a_truncated_walk_is_marked_in_the_allocation_stack() -> None:
    source = AllocSource(SourceOptions())
    feed(source, alloc(3, STACK_TRUNCATED))
    (key,) = source._allocs
    assert key.stack.user == (0x401000,) and key.stack.user_error == -E2BIG


class OrderLoader:
    """Records the order of table loads and symbolizer snapshots."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def load(self, pid: int) -> bool:
        self.log.append(f"tables {pid}")
        return True


@pytest.mark.parametrize(
    ("filter_pids", "expected"),
    [
        (True, ["tables 7", "snapshot 7"]),  # a named target: whole stacks first
        (False, ["snapshot 7", "tables 7"]),  # whole system: catch short-lived ones
    ],
)
def test_announce_order(filter_pids: bool, expected: list[str]) -> None:
    log: list[str] = []
    walker = Walker(SourceOptions(filter_pids=filter_pids))
    walker.loader = OrderLoader(log)  # type: ignore[assignment]
    walker.announce(7, lambda pid: log.append(f"snapshot {pid}"), changed=True)
    assert log == expected and walker.maps_reloaded == 1


@pytest.mark.parametrize(
    "error",
    [
        "cannot compile alloc.bpf.c: /virtual/main.c:1632:16: error: use of undeclared "
        "identifier 'X' (run with -vv for details)",
        "tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing",
    ],
)
def test_a_fault_every_build_shares_is_raised_not_fallen_back_from(
    monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    tried: list[list[str]] = []

    def compile_program(name: str, flags: list[str], functions: Any = None) -> FakeProgram:
        tried.append(flags)
        raise SetupError(error)

    monkeypatch.setattr(bcc_loader, "compile_program", compile_program)
    source: Any = create_source("cpu", SourceOptions())
    with pytest.raises(SetupError, match=error[:20]):
        source._compile()
    assert len(tried) == 1  # neither without Python frames nor with frame pointers


def test_a_deferred_stack_is_walked_again_or_marked_truncated() -> None:
    from agent.sources.unwinding import read_unwound
    from agent.unwind.layout import STACK_DEFERRED

    leaf = SimpleNamespace(ips=[0x401000, 0, 0], len=1, flags=STACK_DEFERRED, hash=77)
    table = FakeTable({5: leaf})
    whole = ((0x401000, 0x401100, 0x401200), 0)
    assert read_unwound(table, 5, lambda h: whole if h == 77 else None) == whole
    # not walked again (its process's tables never came): its root is unknown
    assert read_unwound(table, 5, lambda h: None) == ((0x401000,), -E2BIG)
    assert read_unwound(table, 5) == ((0x401000,), -E2BIG)
    leaf.flags = 0
    assert read_unwound(table, 5, lambda h: whole) == ((0x401000,), 0)


def test_a_deferred_stack_keeps_its_python_frames_and_a_python_one_is_not_deferred() -> None:
    from agent.sources.unwinding import read_unwound
    from agent.unwind.layout import STACK_DEFERRED
    from agent.unwind.pyframes import PY_ENTRY, PY_FRAME, STACK_PYTHON

    py = PY_FRAME | PY_ENTRY | 0x7F0000001000
    flags = STACK_DEFERRED | STACK_PYTHON
    leaf = SimpleNamespace(ips=[0x401000, py, 0], len=2, flags=flags, hash=9)
    table = FakeTable({5: leaf})
    whole = ((0x401000, 0x401100), 0)
    assert read_unwound(table, 5, lambda h: whole if h == 9 else None) == ((*whole[0], py), 0)
    # a walked stack with Python frames is whole as it is: never sent to resolve
    leaf.flags = STACK_PYTHON
    assert read_unwound(table, 5, lambda h: None) == ((0x401000, py), 0)


def test_the_walkers_stack_flags_are_distinct_bits() -> None:
    from agent.unwind import layout, pyframes

    flags = [v for m in (layout, pyframes) for k, v in vars(m).items() if k.startswith("STACK_")]
    assert len(flags) == 9
    assert all(f and f & (f - 1) == 0 for f in flags)  # one bit each
    assert len(set(flags)) == len(flags)
