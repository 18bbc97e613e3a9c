"""The CFI walker (bpf/unwind.h) as every sample source uses it.

A source that takes user stacks compiles its program with the walker when
the options ask for it (`unwind="dwarf"`, the default) and falls back to
its frame-pointer build, with one warning, when the kernel refuses the
walker's program (an older verifier's instruction limit). Once loaded, the
program's unwind maps are kept in step with the processes it sees by an
`UnwindLoader`: a process's tables are loaded when it is first announced,
again when the walker meets a mapping it was not told of (dlopen), and
after an exec.

With `python` on (the default), the walker's build also appends CPython
processes' Python frames (bpf/python.h): each process the loader loads is
looked at by a `PythonLoader` too, which marks it if it runs CPython. If
the kernel refuses that build, the walker is loaded without Python frames
(one warning), and frame pointers remain the last resort.

Each loaded program has its own copy of the maps: the rows of libc go into
every program that walks it, from the same on-disk cache.

A program built with UNWIND_RAW (the CPU program) sends the registers and
top stack pages of each sample it took before the process was loaded; the
walker keeps them (`on_raw`) and, when the stack is read at the next drain,
walks them with the loaded rows (`resolve`), so a process's first
milliseconds, and children that live only that long, have whole stacks.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.errors import SetupError
from agent.kernel import bcc_loader, held
from agent.kernel.loaded import BpfProgram
from agent.kernel.python_maps import BccPythonMaps
from agent.kernel.unwind_maps import BccUnwindMaps
from agent.unwind.layout import E2BIG, RAW_HEADER, STACK_DEFERRED, STACK_TRUNCATED
from agent.unwind.loader import BUILDER, UnwindLoader, default_cache_dir
from agent.unwind.needed import needed_libraries
from agent.unwind.pyframes import PY_FRAME, python_cflags
from agent.unwind.pyloader import PythonLoader
from agent.unwind.rawwalk import RawStack, parse_raw, walk
from agent.unwind.table import TableCache, TableError, load_unwind_info
from agent.unwind.taskbtf import BtfError, read_fsbase_offset
from symbolizer.elf import ElfError, read_build_id
from symbolizer.safeopen import open_regular

log = logging.getLogger("bpfprof.unwind")
CODES_PER_CALL = 8192  # python_codes(): pairs taken from the queue per call (its size)
RAW_KEPT = 2048  # raw stacks held until their drain (16 KiB each: 32 MiB at most)
RAW_PAGES = 4  # stack pages a raw stack keeps, from the one holding RSP
Resolve = Callable[[int], "tuple[tuple[int, ...], int] | None"]


def raw_cflags() -> list[str]:
    """The flags that make the walker keep raw stacks of processes not
    loaded yet, for a program whose stack ids are freed at each drain (a
    raw stack is its own id)."""
    return ["-DUNWIND_RAW=1", f"-DUNWIND_RAW_PAGES={RAW_PAGES}"]


_COMPILER_ERROR = re.compile(r"\.[ch]:\d+:\d+: error:")


def refused_by_kernel(exc: SetupError) -> bool:
    """Whether a failed build is the kernel's refusal of that build (the
    verifier's limits: a smaller build may pass), not a fault every build
    shares: a compiler error in the source, a missing tracefs."""
    text = str(exc)
    return not (_COMPILER_ERROR.search(text) or "tracefs" in text)


def unwind_cflags(limits: BpfLimits) -> list[str]:
    """The flags that turn on the CFI walker of bpf/unwind.h and size its maps."""
    return [
        "-DUNWIND_DWARF=1",
        f"-DUNWIND_ROWS={limits.unwind_rows}",
        f"-DUNWIND_MAPS={limits.unwind_mappings}",
        f"-DUNWIND_PROCS={limits.seen_entries}",
    ]


def python_frames_cflags(limits: BpfLimits) -> list[str]:
    """The flags that add bpf/python.h to the walker's build; [] (with one
    warning) when the running kernel's BTF does not say where a task keeps
    its FS base, which the walk needs to find a thread's Python state."""
    offset = _fsbase_offset()
    if offset is None:
        return []
    return ["-DPYTHON_FRAMES=1", *python_cflags(offset), f"-DPY_PROCS={limits.seen_entries}"]


def first_build_flags(options: SourceOptions) -> list[str]:
    """What the walker adds to a program's flags in the build it tries
    first: bpf/python.h's, when the walker and Python frames are wanted
    (`check --print-bpf` shows that build)."""
    if options.unwind != "dwarf" or not options.python:
        return []
    return python_frames_cflags(options.limits)


@functools.cache
def _fsbase_offset() -> int | None:
    """The running kernel's offset of a task's FS base, read (and, when it
    cannot be, warned about) once per agent, however many sources ask."""
    try:
        return read_fsbase_offset()
    except (BtfError, OSError, ValueError) as exc:
        log.warning("no Python frames: cannot read the kernel's task layout from its BTF: %s", exc)
        return None


class Walker:
    """One program's walker: compiling with the fallback, loading tables,
    and its self-metrics. `active` is False with frame pointers only."""

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        self._options = options
        self._cache_dir = cache_dir
        self._maps: BccUnwindMaps | None = None
        self._python_maps: BccPythonMaps | None = None
        self.loader: UnwindLoader | None = None
        self.python: PythonLoader | None = None
        self.maps_reloaded = 0  # reloads the walker asked for (dlopen)
        self.raw = False  # the loaded build keeps raw stacks (UNWIND_RAW)
        self._raw: OrderedDict[int, RawStack] = OrderedDict()  # by hash, oldest first
        # resolved: walked (before_tables: of those, some binary's table was
        # still being built), unresolved: no layout, dropped: never read
        self.raw_stats = {"resolved": 0, "before_tables": 0, "unresolved": 0, "dropped": 0}
        self._drain_ends = 0.0  # when this drain stops waiting for tables

    @property
    def wanted(self) -> bool:
        return self._options.unwind == "dwarf"

    @property
    def python_active(self) -> bool:
        """Whether the loaded program appends Python frames."""
        return self._python_maps is not None

    @property
    def active(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._maps is not None

    def compile(
        self,
        program: str,
        flags: Callable[[bool], list[str]],
        functions: Mapping[str, str] | None = None,
    ) -> BpfProgram:
        """The walker's build of `program` if wanted and accepted, else the
        frame-pointer one. `flags(unwind)` gives the -D flags of each;
        `functions` the program types (see bcc_loader.compile_program).
        With Python frames wanted, the walker's build with them is tried
        first, then the walker's without them."""
        if self.wanted:
            python = first_build_flags(self._options)
            for extra in [python, []] if python else [[]]:
                try:
                    loaded = bcc_loader.compile_program(program, flags(True) + extra, functions)
                except SetupError as exc:
                    if "run as root" in str(exc) and os.geteuid() != 0:
                        raise
                    if not refused_by_kernel(exc):
                        raise  # the same in every build: say it as it is
                    if extra:
                        log.warning("no Python frames: the kernel refused the build: %s", exc)
                    else:
                        log.warning("user stacks fall back to frame pointers: %s", exc)
                    continue
                self._maps = BccUnwindMaps(loaded)
                self.raw = "-DUNWIND_RAW=1" in flags(True)
                if extra:
                    self._python_maps = BccPythonMaps(loaded)
                return loaded
        return bcc_loader.compile_program(program, flags(False), functions)

    def start(self, targets: Iterable[int]) -> None:
        """Make the loader, and load the processes already known."""
        if self._maps is None:
            return
        limits = self._options.limits
        self.loader = UnwindLoader(
            self._maps,
            max_rows=limits.unwind_rows,
            max_maps=limits.unwind_mappings,
            cache=TableCache(self._cache_dir or default_cache_dir()),
            builder=BUILDER,
        )
        if self._python_maps is not None:
            self.python = PythonLoader(self._python_maps, max_procs=limits.seen_entries)
        self.prewarm(self._options.prewarm)
        for pid in targets:
            if not held.is_held(pid):
                self.load(pid)

    def announce(
        self, pid: int, observe: Callable[[int], None] | None, *, changed: bool = False
    ) -> None:
        """A process was seen (again): snapshot it for the symbolizer and load
        its tables. Processes the user named (--pid, a command) get their
        tables first, so their next samples are walked whole; in whole-system
        mode the symbolizer's snapshot goes first, since a short-lived
        process may be gone by the time a cold table is built."""
        if bcc_loader.is_loader(pid):
            return  # bpfprof's own compiler at work (see bcc_loader)
        if held.is_held(pid):
            return  # our held COMMAND child, still a copy of us: its exec announces it
        if self._options.filter_pids:
            self.load(pid, changed=changed)
        if observe is not None:
            observe(pid)
        if not self._options.filter_pids:
            self.load(pid, changed=changed)

    def prewarm(self, executables: Iterable[str]) -> None:
        """Build (into the disk cache) the tables of executables and the
        libraries they need, before they run: a held command then finds
        every table ready when it execs. Host paths of bpfprof's own
        COMMAND (its user's choice), read as regular files only."""
        if self.loader is None:
            return
        cache = self.loader.cache
        for path in command_files(executables):
            try:
                with open_regular(path, nofollow=False) as f:
                    build_id = read_build_id(f)
                    if build_id and cache.get(build_id) is None:
                        load_unwind_info(f, build_id, cache)
            except (OSError, ElfError, TableError) as exc:
                log.debug("no unwind table for %s before start: %s", path, exc)

    def load(self, pid: int, *, changed: bool = False) -> None:
        """(Re)load one process's tables; `changed`: the walker asked for it
        (a new mapping), else the process is new or exec'd."""
        if self.loader is not None:
            self.loader.load(pid)
        if self.python is not None:
            self.python.load(pid)
        if changed:
            self.maps_reloaded += 1

    def begin_drain(self) -> None:
        """A drain starts: its raw stacks may wait table_wait_s in all for
        the tables being built."""
        self._drain_ends = time.monotonic() + self._options.table_wait_s

    def poll(self) -> None:
        """Place the tables built in the background since the last call
        (a big binary's: agent/unwind/loader.py), publishing the processes
        that waited for them."""
        if self.loader is not None:
            self.loader.finish_builds()

    def open_rings(self, bpf: BpfProgram) -> None:
        """Take the walker's ring buffers into the program's poll: the raw
        stacks, and the wake-ups a stack with new code objects sends, so the
        poll returns and the code objects are read while a short-lived
        process still lives (bpf/python.h, python_wake)."""
        if self.raw:
            bpf["unwind_raw"].open_ring_buffer(self.on_raw)
        if self._python_maps is not None:
            bpf["python_wake"].open_ring_buffer(_woken)

    def on_raw(self, _ctx: Any, data: int, size: int) -> None:
        """A ring-buffer record of `unwind_raw`: keep it for its drain."""
        if size < RAW_HEADER.size:
            return
        raw = parse_raw(ctypes.string_at(data, size))
        self._raw[raw.hash] = raw
        while len(self._raw) > RAW_KEPT:  # their stacks were lost or never read
            self._raw.popitem(last=False)
            self.raw_stats["dropped"] += 1

    def resolve(self, stack_hash: int) -> tuple[tuple[int, ...], int] | None:
        """(ips, user_error) of a deferred stack, walked now over its raw
        copy with its process's rows; None (keep the frame-pointer stack)
        when the copy or the process's mappings are missing."""
        raw = self._raw.pop(stack_hash, None)
        if raw is None or self.loader is None:
            return None
        wait_s = max(0.0, self._drain_ends - time.monotonic())
        layout = self.loader.layout(raw.pid, wait_s)
        if layout is None and self.loader.load(raw.pid):  # not announced yet
            layout = self.loader.layout(raw.pid, wait_s)
        if layout is None:
            self.raw_stats["unresolved"] += 1
            return None
        ips, flags = walk(raw, layout)
        self.raw_stats["resolved"] += 1
        self.raw_stats["before_tables"] += self.loader.building(raw.pid)
        return ips, -E2BIG if flags & STACK_TRUNCATED else 0

    def python_codes(self, limit: int = CODES_PER_CALL) -> list[tuple[int, int]]:
        """(pid, code object address) pairs the walker met for the first
        time since the last call, at most `limit` of them (bpf/python.h)."""
        if self._python_maps is None:
            return []
        return self._python_maps.pop_codes(limit)

    def counters(self) -> dict[str, int]:
        """The walker's and the loader's self-metrics, prefixed `unwind_`."""
        if self._maps is None or self.loader is None:
            return {}
        out = {f"unwind_{k}": v for k, v in self._maps.stats().items()}
        out.update({f"unwind_{k}": v for k, v in vars(self.loader.stats).items()})
        out["unwind_maps_reloaded"] = self.maps_reloaded
        if self.raw:
            out.update({f"unwind_raw_{k}": v for k, v in self.raw_stats.items()})
        if self._python_maps is not None and self.python is not None:
            out.update({f"python_{k}": v for k, v in self._python_maps.stats().items()})
            out.update({f"python_{k}": v for k, v in vars(self.python.finder.stats).items()})
            out.update({f"python_{k}": v for k, v in vars(self.python.stats).items()})
        return out


def _woken(_ctx: Any, _data: int, _size: int) -> None:
    """A python_wake record: its only work is to end the poll."""


def command_files(executables: Iterable[str]) -> list[str]:
    """Executables and the libraries each needs (ld.so's rules): the files
    of a COMMAND, whose tables are read before it runs."""
    return [p for exe in executables for p in (exe, *needed_libraries(exe))]


def read_unwound(
    user_stacks: Any,
    stack_id: int,
    resolve: Resolve | None = None,
    deferred: list[int] | None = None,
) -> tuple[tuple[int, ...], int]:
    """(ips leaf first, user_error) of one stack the walker stored in
    `ustacks` (bpf/ustacks.h); a stack cut at the frame limit gets -E2BIG.
    A deferred stack (walked before its tables were loaded) is walked again
    by `resolve` from its raw copy, when it can be; its id is appended to
    `deferred`."""
    if stack_id < 0:
        return (), stack_id
    try:
        leaf = user_stacks[user_stacks.Key(stack_id)]
    except KeyError:
        return (), 0
    if int(leaf.flags) & STACK_DEFERRED:
        if deferred is not None:
            deferred.append(stack_id)
        whole = resolve(int(leaf.hash)) if resolve is not None else None
        if whole is not None:  # the native part walked again; Python frames kept
            ips, error = whole
            kept = leaf.ips[: min(int(leaf.len), len(leaf.ips))]
            python = tuple(int(ip) for ip in kept if int(ip) & PY_FRAME)
            return ips + python, error
        # the walk stopped where its tables were missing and was not redone:
        # what lies above the frame-pointer frames is unknown, so say so
        return unwound_ips(leaf.ips, int(leaf.len), int(leaf.flags) | STACK_TRUNCATED)
    return unwound_ips(leaf.ips, int(leaf.len), int(leaf.flags))


def unwound_ips(ips: Any, length: int, flags: int) -> tuple[tuple[int, ...], int]:
    """The first `length` ips of a walked stack and its user_error."""
    out = tuple(int(ip) for ip in ips[: min(length, len(ips))])
    return out, -E2BIG if flags & STACK_TRUNCATED else 0
