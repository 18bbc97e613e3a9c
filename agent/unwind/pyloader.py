"""Marking CPython processes for the Python walker (bpf/python.h).

For each process the walker loads, its executable mappings are looked at
by symbolizer/cpython's TargetFinder: a CPython process gets its version's
layout in `python_layouts` (one slot per distinct layout, shared by every
process of that version) and its roots in `python_procs`; any other
process (or one that exec'd into something else) has its entry deleted.

Each entry carries a generation, changed whenever a pid is marked afresh
(first seen, or seen again after an exec), so the kernel sends the code
objects of the new image again (python.h, python_codes_seen). An exec is
told by the entry itself: the exec tracepoint deletes it, so an entry
still there with the generation written last is the same image (a reload
for a new mapping, or the process announced again), which keeps it.

The maps are written through a `PyMapWriter`, so this module has no BPF in
it and its tests use a plain fake. Nothing a process controls (its death,
unreadable maps, a strange interpreter) raises here.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.unwind.pyframes import PyLayout, PyProc, pack_layout, pack_proc
from symbolizer.cpython.layout import WalkLayout
from symbolizer.cpython.target import PythonTarget, TargetFinder
from symbolizer.procmaps import MapEntry, parse_maps, read_maps

log = logging.getLogger("bpfprof.python")

PY_LAYOUTS = 16  # python.h's default number of layout slots


class PyMapWriter(Protocol):
    def set_layout(self, index: int, layout: PyLayout) -> None: ...
    def get_process(self, pid: int) -> PyProc | None: ...
    def set_process(self, pid: int, proc: PyProc) -> None: ...
    def delete_process(self, pid: int) -> None: ...


@dataclass
class PyLoaderStats:
    processes: int = 0  # processes marked as CPython (again after an exec)
    layouts: int = 0  # layout slots in use
    layouts_full: int = 0  # CPython processes left unmarked: no slot for their layout
    procs_full: int = 0  # CPython processes left unmarked: python_procs was full
    not_python: int = 0  # loads of processes that run no CPython the walker follows


class PythonLoader:
    """Keeps python_layouts and python_procs in step with the processes
    the walker loads."""

    def __init__(
        self,
        writer: PyMapWriter,
        *,
        max_layouts: int = PY_LAYOUTS,
        max_procs: int = 4096,
        proc_root: str = "/proc",
        finder: TargetFinder | None = None,
    ) -> None:
        self._writer = writer
        self._max_layouts = max_layouts
        self._max_procs = max_procs
        self._proc_root = proc_root
        self.finder = finder or TargetFinder(proc_root)
        self._layouts: dict[WalkLayout, int] = {}
        self._procs: dict[int, int] = {}  # pid -> generation of its entry
        self._generation = 0
        self._warned: set[str] = set()
        self.stats = PyLoaderStats()

    def load(self, pid: int, maps: Sequence[MapEntry] | None = None) -> PythonTarget | None:
        """Mark `pid` if it runs CPython, else unmark it; its target or None.
        `maps`: its mappings, read here if not given."""
        if maps is None:
            try:
                maps = parse_maps(read_maps(pid, self._proc_root))
            except OSError:  # gone, or hidden from us
                self.forget(pid)
                return None
        target = self.finder.find(pid, maps)
        if target is None:
            self._unmark(pid)
            return None
        index = self._layout_index(target.layout)
        if index is None:
            self._unmark(pid)
            return None
        generation = self._procs.get(pid)
        held = self._writer.get_process(pid)
        if generation is None or held is None or held.generation != generation:
            self._generation += 1  # a new image: its code objects are sent again
            generation = self._generation
        if not self._set(pid, pack_proc(target.runtime, target.code_type, index, generation)):
            return None
        self._procs[pid] = generation
        self.stats.processes += 1
        return target

    def forget(self, pid: int) -> None:
        """The process is gone (or no longer to be walked): delete its entry."""
        if self._procs.pop(pid, None) is not None:
            self._writer.delete_process(pid)

    def sweep(self) -> int:
        """Forget processes that have exited; how many were."""
        gone = [pid for pid in self._procs if not os.path.exists(f"{self._proc_root}/{pid}")]
        for pid in gone:
            self.forget(pid)
        return len(gone)

    def _unmark(self, pid: int) -> None:
        # the kernel may hold an entry we did not write (an exec raced us): delete always
        self._procs.pop(pid, None)
        self._writer.delete_process(pid)
        self.stats.not_python += 1

    def _set(self, pid: int, proc: PyProc) -> bool:
        if pid not in self._procs and len(self._procs) >= self._max_procs:
            self.sweep()
        try:
            self._writer.set_process(pid, proc)
            return True
        except OSError as exc:
            if exc.errno not in (errno.E2BIG, errno.ENOMEM, errno.ENOSPC) or not self.sweep():
                return self._full(pid, exc)
        try:
            self._writer.set_process(pid, proc)
            return True
        except OSError as exc:
            return self._full(pid, exc)

    def _full(self, pid: int, exc: OSError) -> bool:
        self.stats.procs_full += 1
        message = f"Python processes table full ({exc}): process {pid} gets no Python frames"
        self._warn("procs", message)
        return False

    def _layout_index(self, layout: WalkLayout) -> int | None:
        index = self._layouts.get(layout)
        if index is not None:
            return index
        if len(self._layouts) >= self._max_layouts:
            self.stats.layouts_full += 1
            self._warn(
                "layouts",
                f"{self._max_layouts} distinct CPython layouts loaded already: "
                "processes of other versions get no Python frames",
            )
            return None
        index = len(self._layouts)
        try:
            packed = pack_layout(layout)
        except ValueError as exc:  # offsets no 32-bit field holds: read from a strange file
            log.debug("a CPython layout the walker cannot take: %s", exc)
            return None
        self._writer.set_layout(index, packed)
        self._layouts[layout] = index
        self.stats.layouts = len(self._layouts)
        return index

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)
