"""PythonLoader (agent/unwind/pyloader.py) with a fake writer and finder:
which processes get an entry, layout slots, generations. No BPF, no root."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from agent.unwind.pyframes import PyLayout, PyProc
from agent.unwind.pyloader import PythonLoader
from symbolizer.cpython.layout import inspect_file
from symbolizer.cpython.target import PythonTarget, TargetFinder
from symbolizer.procmaps import MapEntry

LAYOUT = inspect_file("/usr/bin/python3.11")[1]  # type: ignore[index]


@dataclass
class FakeWriter:
    layouts: dict[int, bytes] = field(default_factory=dict)
    procs: dict[int, PyProc] = field(default_factory=dict)
    room: int = 100

    def set_layout(self, index: int, layout: PyLayout) -> None:
        self.layouts[index] = bytes(layout)

    def get_process(self, pid: int) -> PyProc | None:
        return self.procs.get(pid)

    def set_process(self, pid: int, proc: PyProc) -> None:
        if pid not in self.procs and len(self.procs) >= self.room:
            raise OSError(errno.E2BIG, "full")
        self.procs[pid] = proc

    def delete_process(self, pid: int) -> None:
        self.procs.pop(pid, None)


class FakeFinder(TargetFinder):
    """pid -> target, as if read from each process's mappings."""

    def __init__(self, targets: dict[int, PythonTarget | None]) -> None:
        super().__init__()
        self.targets = targets

    def find(self, pid: int, maps: Sequence[MapEntry]) -> PythonTarget | None:
        return self.targets.get(pid)


def target(runtime: int = 0x1000, layout: object = LAYOUT) -> PythonTarget:
    return PythonTarget("/usr/bin/python3.11", (3, 11), layout, runtime, 0x2000, (), ())  # type: ignore[arg-type]


def loader(
    targets: dict[int, PythonTarget | None], room: int = 100
) -> tuple[PythonLoader, FakeWriter]:
    writer = FakeWriter(room=room)
    return PythonLoader(
        writer, max_layouts=2, finder=FakeFinder(targets), proc_root="/nonexistent"
    ), writer


def test_python_processes_share_a_layout_slot_and_others_are_unmarked() -> None:
    # GIVEN two 3.11 processes and a shell, whose stale entry the kernel still holds
    py, writer = loader({1: target(), 2: target(0x5000), 3: None})
    writer.procs[3] = PyProc()
    # WHEN each is loaded
    for pid in (1, 2, 3):
        py.load(pid, maps=[])
    # THEN both Python processes use slot 0 with their own roots; the shell has no entry
    assert set(writer.layouts) == {0} and writer.procs.keys() == {1, 2}
    assert (writer.procs[1].runtime, writer.procs[2].runtime) == (0x1000, 0x5000)
    assert writer.procs[1].layout == writer.procs[2].layout == 0
    assert py.stats.not_python == 1 and py.stats.processes == 2


def test_generation_is_kept_on_reload_and_renewed_after_an_exec() -> None:
    py, writer = loader({1: target()})
    py.load(1, maps=[])
    first = writer.procs[1].generation
    py.load(1, maps=[])  # announced again, or a new mapping: same image
    assert writer.procs[1].generation == first
    del writer.procs[1]  # the exec tracepoint deleted the entry
    py.load(1, maps=[])
    assert writer.procs[1].generation != first


def test_layout_slots_are_bounded() -> None:
    layouts = [replace(LAYOUT, tstate_next=LAYOUT.tstate_next + 8 * i) for i in range(3)]
    py, writer = loader({i: target(layout=layouts[i]) for i in range(3)})
    for pid in range(3):
        py.load(pid, maps=[])
    assert writer.procs.keys() == {0, 1} and py.stats.layouts_full == 1


def test_a_full_process_table_is_counted_not_raised() -> None:
    # GIVEN room for one entry, held by a process that lives (this one)
    alive, other = os.getpid(), os.getppid()
    py, writer = loader({alive: target(), other: target()}, room=1)
    py._proc_root = "/proc"
    py.load(alive, maps=[])
    # THEN another is refused and counted
    assert py.load(other, maps=[]) is None
    assert writer.procs.keys() == {alive} and py.stats.procs_full == 1


def test_a_full_process_table_makes_room_by_forgetting_exited_processes() -> None:
    py, writer = loader({1 << 30: target(), os.getpid(): target()}, room=1)
    py._proc_root = "/proc"
    py.load(1 << 30, maps=[])  # no such process: swept when room is needed
    assert py.load(os.getpid(), maps=[]) is not None
    assert writer.procs.keys() == {os.getpid()} and py.stats.procs_full == 0


def test_a_gone_process_is_forgotten() -> None:
    py, writer = loader({1: target()})
    py.load(1, maps=[])
    assert py.load(1) is None  # its maps cannot be read: /nonexistent/1/maps
    assert writer.procs == {}
