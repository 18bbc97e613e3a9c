"""Which processes run CPython, and where its roots are in each.

A process runs Python when one of its executable mappings is a file that
`find_interpreter` recognises (python3.X, libpython3.X.so, an embedding
binary): never by its name. `TargetFinder.find(pid, maps)` opens each
file-backed executable mapping through the process's own map_files (or its
root, confined; see symbolizer.process.open_mapped) and returns the roots the
walkers need, as the process's runtime addresses:

- `runtime`: `_PyRuntime`; `code_type`: `PyCode_Type`;
- `layout`: the version's WalkLayout;
- `eval_ranges`: where `_PyEval_EvalFrameDefault` runs (its symbol and
  .cold part), for the splice of Python frames into native stacks;
- `text`: the interpreter file's executable mappings;
- `split_loop`: the symbol is too small to be the loop (under SPLIT_BELOW
  bytes; every whole loop of 3.8-3.14 is tens of KiB): a stripped PGO build
  runs its dispatch loop in an unnamed part outside the symbol (Debian's
  3.14: 1184 bytes under the symbol, the loop in an unnamed 84 KiB part), so
  an unnamed address in `text` is taken as the loop too. Only then: in a
  whole-loop build (Debian's 3.11 and 3.13) unnamed text is the stripped
  binary's static functions (pymalloc's, say), never the loop.

The answer per file is cached by its identity (device, inode, size, mtime),
so a host of Python processes reads each interpreter once. An interpreter
the walker cannot follow (3.15, free-threaded, corrupt) is logged once per
file, naming the version, counted, and gives None: native frames only.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from symbolizer.budget import Budget, ElfError
from symbolizer.cpython.interp import Interpreter, UnsupportedInterpreter, find_interpreter
from symbolizer.cpython.layout import WalkLayout, walk_layout
from symbolizer.cpython.walk import load_bias
from symbolizer.elffile import ElfFile, Segment
from symbolizer.process import open_mapped
from symbolizer.procmaps import MapEntry

log = logging.getLogger("bpfprof.python")

MAX_FILES = 256  # interpreter answers kept, by file identity
MAX_CANDIDATES = 16  # executable files looked at per process
SPLIT_BELOW = 4096  # an eval symbol smaller than this is not the whole loop

FileKey = tuple[int, int, int, int]

# Files already warned about, for the whole agent: every walker and the
# names side each keep a finder, and a binary is one warning however many
# finders meet it.
_WARNED: set[FileKey] = set()
MAX_WARNED = 4096


class LoopPlaces:
    """Where a process's eval loop runs, for the splice: what a live target
    and a saved one (a replay's, symbolizer/cpython/names.py) share."""

    eval_ranges: tuple[tuple[int, int], ...]
    text: tuple[tuple[int, int], ...]
    split_loop: bool

    def in_eval(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.eval_ranges)

    def in_text(self, address: int) -> bool:
        return any(lo <= address < hi for lo, hi in self.text)

    def in_split_loop(self, address: int) -> bool:
        """Whether an unnamed `address` may be the loop's split-off part."""
        return self.split_loop and self.in_text(address)


@dataclass(frozen=True)
class PythonTarget(LoopPlaces):
    """One process's CPython, as runtime addresses of that process."""

    path: str  # the interpreter's mapping path, as the process's maps show it
    version: tuple[int, int]
    layout: WalkLayout
    runtime: int
    code_type: int
    eval_ranges: tuple[tuple[int, int], ...]
    text: tuple[tuple[int, int], ...]
    split_loop: bool = False


@dataclass
class TargetStats:
    found: int = 0  # processes with a supported CPython
    unsupported: int = 0  # interpreter files the walker cannot follow
    errors: int = 0  # files that could not be opened or parsed
    file_reads: int = 0  # files parsed (the rest came from the cache)


@dataclass
class _Answer:
    interp: Interpreter | None
    layout: WalkLayout | None
    segments: tuple[Segment, ...] = field(default=())


class TargetFinder:
    """PythonTarget per process, with interpreter files cached by identity."""

    def __init__(self, proc_root: str = "/proc", max_files: int = MAX_FILES) -> None:
        self.proc_root = proc_root
        self.max_files = max_files
        self.stats = TargetStats()
        self._files: OrderedDict[FileKey, _Answer] = OrderedDict()

    def find(self, pid: int, maps: Sequence[MapEntry]) -> PythonTarget | None:
        """The process's CPython, or None (none, unsupported, unreadable).
        Never raises for anything the process controls."""
        seen: set[tuple[str, int]] = set()
        for entry in maps:
            if not entry.is_exec or not entry.is_file or (entry.dev, entry.inode) in seen:
                continue
            seen.add((entry.dev, entry.inode))
            if len(seen) > MAX_CANDIDATES:
                break
            answer = self._answer(pid, entry)
            if answer is None or answer.interp is None or answer.layout is None:
                continue
            target = _target(entry, maps, answer)
            if target is not None:
                self.stats.found += 1
                return target
        return None

    def _answer(self, pid: int, entry: MapEntry) -> _Answer | None:
        try:
            f, _place = open_mapped(pid, entry, self.proc_root)
        except OSError:
            return None  # gone, or not the mapped file: nothing to say of it
        with f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._files.get(key)
            if cached is not None:
                self._files.move_to_end(key)
                return cached
            self.stats.file_reads += 1
            try:
                elf = ElfFile(f, Budget())
                interp = find_interpreter(elf)
                layout = walk_layout(interp, elf) if interp is not None else None
                answer = _Answer(interp, layout, tuple(elf.segments()) if interp else ())
            except UnsupportedInterpreter as exc:
                self.stats.unsupported += 1
                if key not in _WARNED:
                    if len(_WARNED) >= MAX_WARNED:
                        _WARNED.clear()
                    _WARNED.add(key)
                    log.warning("%s: %s; its processes get native frames only", entry.path, exc)
                answer = _Answer(None, None)
            except (ElfError, OSError, ValueError) as exc:
                self.stats.errors += 1
                log.debug("%s: not read as an interpreter: %s", entry.path, exc)
                answer = _Answer(None, None)
        self._files[key] = answer
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return answer


def _target(entry: MapEntry, maps: Sequence[MapEntry], answer: _Answer) -> PythonTarget | None:
    interp, layout = answer.interp, answer.layout
    assert interp is not None and layout is not None
    same = [m for m in maps if (m.dev, m.inode) == (entry.dev, entry.inode)]
    bias = load_bias(same, entry.path, answer.segments)
    if bias is None:
        return None
    return PythonTarget(
        path=entry.path,
        version=interp.version,
        layout=layout,
        runtime=bias + interp.runtime,
        code_type=bias + interp.code_type if interp.code_type else 0,
        eval_ranges=tuple((bias + lo, bias + hi) for lo, hi in interp.eval_ranges),
        text=tuple((m.start, m.end) for m in same if m.is_exec),
        split_loop=interp.eval_end - interp.eval_start < SPLIT_BELOW,
    )
