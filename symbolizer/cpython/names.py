"""Names of Python frames: per process, its CPython and its code objects.

`PythonNames` is what the resolver asks for a Python frame's name. It holds,
per observed process, the process's `PythonTarget` (target.py: where the
eval loop runs, the layout, `PyCode_Type`) and decodes code objects through
one `CodeCache` (re-checked against address reuse on every hit):

- `observe(pid, maps)` when a process is announced: finds its CPython and
  keeps it, or drops what was kept (no CPython, not one the walker follows);
- `prefetch(pid, code)` when a source reports a code object it met for the
  first time: decoded now, while the process lives;
- `frame(pid, code, byte_offset)` → `PyName(qualname, filename, line,
  firstlineno)` or None (counted in `code_misses`).

A process that exited keeps its names. The cache re-reads a code object's
header on every hit; for a process that is gone that read fails with ESRCH
(process_vm_readv finds no task, or a zombie without memory). Then, and only
then, the entry decoded while it lived is trusted as it is: nothing can have
reused the address since the process ran. A *live* process whose read fails
(EFAULT: the object's memory was unmapped; EPERM) gets no name: the address
no longer holds what was cached, and which object the sample saw is unknown;
a wrong name is worse than "[python code 0x…]".

A replay has no process at all: `load(pid, SavedTarget, codes)` serves what
a capture saved (`saved(pid)`) as a gone process's entries.

Bounded: at most `max_processes` processes (least recently observed or
asked for go first, with their code objects) and the cache's entries.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from symbolizer.cpython.code import BadCodeObject, CodeInfo
from symbolizer.cpython.codecache import CodeCache
from symbolizer.cpython.memory import MemoryReadError, ProcessMemory
from symbolizer.cpython.target import LoopPlaces, PythonTarget, TargetFinder
from symbolizer.procmaps import MapEntry

MAX_PROCESSES = 4096

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PyName:
    """What a Python frame shows: pprof's Function name, file and line."""

    qualname: str  # co_qualname (3.11+), co_name before
    filename: str
    line: int  # 0: no line (an artificial instruction, an unknown offset)
    firstlineno: int


@dataclass(frozen=True)
class SavedTarget(LoopPlaces):
    """What the splice needs of a process's CPython, without its memory
    (a replay): the interpreter's path and version, where its loop runs."""

    path: str
    version: tuple[int, int]
    eval_ranges: Ranges
    text: Ranges
    split_loop: bool = False

    @classmethod
    def of(cls, target: PythonTarget | SavedTarget) -> SavedTarget:
        return cls(target.path, target.version, target.eval_ranges, target.text, target.split_loop)


@dataclass
class PythonNamesStats:
    named: int = 0  # frames given a name
    code_misses: int = 0  # frames that got no name (the next three say why)
    no_target: int = 0  # ... the process has no CPython held
    unreadable: int = 0  # ... a live process's code object could not be read
    never_decoded: int = 0  # ... a gone process's code object was not decoded in time
    gone_answers: int = 0  # frames of a gone process named from the cache
    prefetched: int = 0  # code objects decoded by prefetch (or re-checked)
    prefetch_errors: int = 0  # prefetches that could not read or decode
    evicted: int = 0  # processes dropped to stay within max_processes


@dataclass
class _Process:
    target: PythonTarget | SavedTarget
    gone: bool = False  # a read said ESRCH, or it was loaded from a capture


class PythonNames:
    """PyName per (pid, code object, offset), for live and exited processes."""

    def __init__(
        self,
        proc_root: str = "/proc",
        max_processes: int = MAX_PROCESSES,
        cache: CodeCache | None = None,
        memory: Callable[[int], ProcessMemory] = ProcessMemory,
    ) -> None:
        """`memory` makes a process's reader (tests give a fake)."""
        self.finder = TargetFinder(proc_root)
        self.cache = cache if cache is not None else CodeCache()
        self.max_processes = max_processes
        self.stats = PythonNamesStats()
        self._memory = memory
        self._procs: OrderedDict[int, _Process] = OrderedDict()

    def __len__(self) -> int:
        return len(self._procs)

    # -- processes -------------------------------------------------------

    def observe(self, pid: int, maps: Sequence[MapEntry]) -> PythonTarget | None:
        """Find and keep `pid`'s CPython, or drop what was kept. Its code
        objects are kept only if it runs the same interpreter as before
        (a dlopen; an exec changes it or the addresses anyway)."""
        target = self.finder.find(pid, maps)
        held = self._procs.get(pid)
        if target is None or held is None or held.target != target:
            self.forget(pid)
        if target is not None:
            self._hold(pid, _Process(target))
        return target

    def target(self, pid: int) -> PythonTarget | SavedTarget | None:
        held = self._procs.get(pid)
        return held.target if held is not None else None

    def forget(self, pid: int) -> None:
        """Drop a process and its code objects (it exited, exec'd, or is not profiled)."""
        self._procs.pop(pid, None)
        self.cache.forget(pid)

    def _hold(self, pid: int, proc: _Process) -> None:
        self._procs[pid] = proc
        self._procs.move_to_end(pid)
        while len(self._procs) > self.max_processes:
            old, _ = self._procs.popitem(last=False)
            self.cache.forget(old)
            self.stats.evicted += 1

    # -- code objects ----------------------------------------------------

    def prefetch(self, pid: int, code: int) -> None:
        """Decode `code` now, while `pid` lives (a source met it first)."""
        held = self._procs.get(pid)
        if held is None or held.gone or not isinstance(held.target, PythonTarget):
            return
        if self._read(pid, held, code) is None:
            self.stats.prefetch_errors += 1
        else:
            self.stats.prefetched += 1

    def frame(self, pid: int, code: int, byte_offset: int | None) -> PyName | None:
        """The name of a frame running `code` at `byte_offset` (None: the
        offset is unknown, the frame gets no line); None if it has none."""
        held = self._procs.get(pid)
        if held is None:
            self.stats.no_target += 1
            self.stats.code_misses += 1
            return None
        self._procs.move_to_end(pid)
        info = self._info(pid, held, code)
        if info is None:
            self.stats.code_misses += 1
            return None
        self.stats.named += 1
        line = info.line(held.target.version, byte_offset) if byte_offset is not None else None
        return PyName(info.name, info.filename, line or 0, info.firstlineno)

    def _info(self, pid: int, held: _Process, code: int) -> CodeInfo | None:
        if not held.gone:
            info = self._read(pid, held, code)
            if info is not None:
                return info
            if not held.gone:  # alive, and the address holds no readable code object
                self.stats.unreadable += 1
                return None
        info = self.cache.peek(pid, code)  # gone: what was decoded while it lived
        if info is None:
            self.stats.never_decoded += 1
        else:
            self.stats.gone_answers += 1
        return info

    def _read(self, pid: int, held: _Process, code: int) -> CodeInfo | None:
        """The code object read (or re-checked) now; marks the process gone
        on ESRCH. None on any failure (the cache counts it)."""
        target = held.target
        assert isinstance(target, PythonTarget)
        try:
            return self.cache.get(self._memory(pid), target.layout, target.code_type, code)
        except MemoryReadError as exc:
            if exc.errno == errno.ESRCH:
                held.gone = True
            return None
        except BadCodeObject:
            return None

    # -- captures and replays --------------------------------------------

    def saved(self, pid: int) -> tuple[SavedTarget, dict[int, CodeInfo]] | None:
        """What a capture keeps of `pid`: its interpreter and every code
        object still held for it (the cache's bound applies)."""
        held = self._procs.get(pid)
        if held is None:
            return None
        return SavedTarget.of(held.target), self.cache.entries(pid)

    def load(self, pid: int, target: SavedTarget, codes: dict[int, CodeInfo]) -> None:
        """Serve a capture's names for `pid`, as a process that is gone."""
        self.forget(pid)
        self._hold(pid, _Process(target, gone=True))
        for address, info in codes.items():
            self.cache.put(pid, address, info)

    def counters(self) -> dict[str, int]:
        """Self-metrics, python_* named: frames, misses and why, the cache, targets."""
        s, c, t = self.stats, self.cache.stats, self.finder.stats
        return {
            "python_processes": len(self._procs),
            "python_frames_named": s.named,
            "python_code_misses": s.code_misses,
            "python_no_target": s.no_target,
            "python_unreadable": s.unreadable,
            "python_never_decoded": s.never_decoded,
            "python_gone_answers": s.gone_answers,
            "python_prefetched": s.prefetched,
            "python_prefetch_errors": s.prefetch_errors,
            "python_processes_evicted": s.evicted,
            "python_code_hits": c.hits,
            "python_code_decoded": c.misses + c.stale,
            "python_code_stale": c.stale,
            "python_code_errors": c.errors,
            "python_code_evictions": c.evictions,
            "python_targets_found": t.found,
            "python_unsupported": t.unsupported,
        }
