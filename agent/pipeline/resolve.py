"""Stack resolution: raw instruction pointers to model Locations.

Every address but a stack's first is a return address: it points after the
call, possibly into the next function or past the end of a noreturn caller.
So callers are looked up at address - 1 (as perf and pprof do), while the
Location keeps the address the kernel gave.

A user stack may end in Python frames (bpf/python.h; decoded by
symbolizer/cpython/frames.py), grouped per C-level activation of the eval
loop. They are spliced into the native stack where the interpreter ran
them (`splice`): each native frame of the loop, innermost first, gives its
place to the next group. docs/python.md tells the rule in full.

A kernel stack taken inside a tracing program starts in the profiler's own
frames (the BPF program, and the kernel's code that ran it for the traced
function); `own_frames` says how many to drop from its leaf end.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol

from agent.model import (
    CPYTHON,
    KERNEL,
    KERNEL_MAPPING_NAME,
    NATIVE,
    Frame,
    Location,
    Mapping,
    RawKey,
    cpython_mapping_name,
)
from symbolizer.cpython.frames import OFFSET_MAX, PyFrame, activations, split

# Kernel addresses live in the top half of the address space on x86-64 and
# arm64, so one mapping covering it holds kernel text, modules and BPF code.
KERNEL_START = 1 << 63
KERNEL_LIMIT = 2**64 - 1
MAX_CACHED = 1 << 15  # locations kept per kind (user, kernel, Python) before starting over
PYTHON_SPACE = 1 << 48  # Python frames' pseudo-mapping: where code objects can lie

# The kernel's code between a traced function and the BPF program it runs:
# bpf_trace_run<N> and __bpf_trace_<event> (raw tracepoints), __traceiter_<event>
# (when more than one probe is on the tracepoint, or without static calls),
# perf's tracepoint path (perf_trace_*, perf_tp_event, trace_call_bpf,
# perf_syscall_*), fentry's bpf_trampoline_* and the program dispatcher.
TRAMPOLINES = (
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "perf_trace_",
    "perf_tp_event",
    "perf_syscall_",
    "trace_call_bpf",
    "bpf_trampoline_",
    "bpf_dispatcher_",
    "__bpf_prog_run",
)
BPF_PROGRAM = "bpf_prog_"  # kallsyms' name of a JITed program: bpf_prog_<tag>_<name>
PROGRAM_FRAMES = 3  # the program (and a helper it called) sit leafward of the first trampoline


class MapEntryLike(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def path(self) -> str: ...


class LineLike(Protocol):
    """One frame of an inline chain (symbolizer.ResolvedLine)."""

    @property
    def function(self) -> str: ...
    @property
    def system_name(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def start_line(self) -> int: ...


class ResolvedLike(Protocol):
    @property
    def mapping(self) -> MapEntryLike | None: ...
    @property
    def build_id(self) -> str: ...
    @property
    def function(self) -> str | None: ...
    @property
    def lines(self) -> Sequence[LineLike]: ...


class FrameSymbolizer(Protocol):
    """What the resolver needs of symbolizer.Symbolizer."""

    def resolve_user(self, pid: int, address: int) -> ResolvedLike: ...
    def resolve_kernel(self, address: int) -> ResolvedLike: ...


class PythonTargetLike(Protocol):
    """What the splice needs of a process's CPython (symbolizer.cpython.target)."""

    @property
    def version(self) -> tuple[int, int]: ...
    def in_eval(self, address: int) -> bool: ...
    def in_text(self, address: int) -> bool: ...
    def in_split_loop(self, address: int) -> bool: ...


class PythonNameLike(Protocol):
    @property
    def qualname(self) -> str: ...
    @property
    def filename(self) -> str: ...
    @property
    def line(self) -> int: ...
    @property
    def firstlineno(self) -> int: ...


class PythonFrameNames(Protocol):
    """What the resolver needs of symbolizer.cpython.names.PythonNames."""

    def target(self, pid: int) -> PythonTargetLike | None: ...
    def frame(self, pid: int, code: int, byte_offset: int | None) -> PythonNameLike | None: ...


def lost_stack(what: str, error: int) -> Location | None:
    """A pseudo-location that keeps a sample whose stack the kernel lost, or
    marks one cut short (-E2BIG: deeper than the unwinder's frame limit).

    -EFAULT only means there is no stack of that kind (a kernel thread's user
    stack, a user-mode sample's kernel stack): nothing was lost."""
    if error in (0, -errno.EFAULT):
        return None
    if error == -errno.E2BIG:  # the frames are there, but the outermost ones are not
        return Location(address=0, frames=(Frame(f"[{what} stack truncated]"),))
    reasons = {
        -errno.EEXIST: "stack-map collision",
        -errno.ENOENT: "wait outlived its stack generation",  # agent/sources/waits.py
    }
    reason = reasons.get(error, f"error {-error}")
    return Location(address=0, frames=(Frame(f"[{what} stack lost: {reason}]"),))


class StackResolver:
    """Resolves RawKeys to location tuples (leaf first), caching per address.

    One resolver can live as long as the agent: a stack seen in every
    interval is then symbolized once, not once per interval. It must be told
    when a process's answers may have changed: `forget(pid)` when the pid is
    observed again (exec, dlopen) or is gone. An address that could not be
    symbolized is kept for the interval only (a JIT's perf map may name it
    later); `misses` counts those met since `start_interval()`.
    """

    def __init__(
        self,
        symbolizer: FrameSymbolizer,
        python: PythonFrameNames | None = None,
        max_cached: int = MAX_CACHED,
    ) -> None:
        self._sym = symbolizer
        self._python = python
        self._py: dict[tuple[int, int, int], Location] = {}  # (pid, code, offset)
        self._py_mappings: dict[tuple[int, int] | None, Mapping] = {}
        self.python_unnamed = 0  # Python frames shown by address: their code had no name
        self._max_cached = max_cached
        self._user: dict[int, dict[tuple[int, bool], Location]] = {}
        self._user_count = 0
        self._kernel: dict[tuple[int, bool], Location] = {}
        self._kernel_mapping = Mapping(KERNEL_START, KERNEL_LIMIT, 0, KERNEL_MAPPING_NAME)
        # unsymbolized locations of this interval, by (pid or -1, address, is_return)
        self._missed: dict[tuple[int, int, bool], Location] = {}

    @property
    def misses(self) -> int:
        """Distinct addresses not symbolized since the interval started."""
        return len(self._missed)

    def start_interval(self) -> None:
        """Ask again for what could not be symbolized (the rest stays
        cached), and for every Python frame: a code object's address can be
        reused by another one, which PythonNames re-checks once an interval
        (one small read per distinct frame) rather than never."""
        self._missed.clear()
        self._py.clear()

    def forget(self, pid: int) -> None:
        """Drop a process's cached locations: re-observed, or gone."""
        self._user_count -= len(self._user.pop(pid, ()))
        if any(k[0] == pid for k in self._py):
            self._py = {k: v for k, v in self._py.items() if k[0] != pid}

    def locations(self, key: RawKey) -> tuple[Location, ...]:
        stack = key.stack
        kernel = [self._kernel_location(a, i > 0) for i, a in enumerate(stack.kernel)]
        out = kernel[own_frames(kernel) :]
        lost = lost_stack("kernel", stack.kernel_error)
        if lost:
            out.append(lost)
        if stack.user:
            parts = split(stack.user)
            cache = self._user.get(key.pid)
            if cache is None:
                cache = self._user[key.pid] = {}
            native = [
                self._user_location(cache, key.pid, a, i > 0) for i, a in enumerate(parts.native)
            ]
            if parts.python:
                native = self._splice(key.pid, parts.native, native, parts.python)
            out.extend(native)
        lost = lost_stack("user", stack.user_error)
        if lost:
            out.append(lost)
        return tuple(out)

    def _user_location(
        self, cache: dict[tuple[int, bool], Location], pid: int, address: int, is_return: bool
    ) -> Location:
        ck = (address, is_return)
        loc = cache.get(ck) or self._missed.get((pid, address, is_return))
        if loc is None:
            lookup = address - 1 if is_return else address
            r = self._sym.resolve_user(pid, lookup)
            m = r.mapping
            mapping = Mapping(m.start, m.end, m.offset, m.path, r.build_id) if m else None
            if mapping is not None and address >= mapping.limit:
                # a return address just past the end of its mapping (the
                # call was the mapping's last instruction, or a garbage
                # frame): keep the address that lies in the mapping
                address = lookup
            loc = self._location(address, mapping, r, NATIVE)
            if not loc.frames:
                self._missed[(pid, ck[0], is_return)] = loc
                return loc
            if self._user_count >= self._max_cached:
                for held in self._user.values():  # a cheap bound; hot stacks come back
                    held.clear()
                self._user = {pid: cache}
                self._user_count = 0
            cache[ck] = loc
            self._user_count += 1
        return loc

    def _splice(
        self,
        pid: int,
        addresses: Sequence[int],
        native: list[Location],
        python: Sequence[PyFrame],
    ) -> list[Location]:
        """The user stack with its Python frames in the place of the native
        frames of the eval loop that ran them (leaf first, as both come).

        A native frame is the loop if it lies in `_PyEval_EvalFrameDefault`
        (target.in_eval), or, where that symbol is too small to be the
        whole loop (target.split_loop), in the interpreter's text where no
        symbol covers it (Debian's stripped PGO 3.14 runs its dispatch loop
        in an unnamed part outside the symbol). Adjacent loop frames are one
        activation: a real re-entry always has a C caller between (the
        vectorcall that starts the next activation), and the native
        unwinder can take a stale return address of the loop's own for the
        leaf's caller (a third of the samples of a 3.11 spin loop). The
        i-th run of loop frames, innermost first, takes the i-th group of
        Python frames; the outermost run takes every group left over
        (loop frames ran out: a stack cut by the native unwinder's limit);
        runs left over stay native.
        With no loop frame at all, the Python frames go just leafward of the
        outermost run of the interpreter's own frames (main, Py_RunMain...),
        or at the root end if none is known. No Python frame is dropped."""
        target = self._python.target(pid) if self._python is not None else None
        groups = [[self._python_location(pid, target, f) for f in g] for g in activations(python)]
        loops = [] if target is None else _loop_frames(target, addresses, native)
        if not loops:
            at = _outer_run(target, addresses)
            return native[:at] + [loc for g in groups for loc in g] + native[at:]
        runs = _runs(loops)
        out: list[Location] = []
        taken, i = 0, 0
        while i < len(native):
            run = runs.get(i)
            if run is None or taken >= len(groups):
                out.append(native[i])
                i += 1
                continue
            rest = groups[taken:] if i == loops[-1] - run + 1 else groups[taken : taken + 1]
            out.extend(loc for g in rest for loc in g)
            taken += len(rest)
            i += run
        return out

    def _python_location(
        self, pid: int, target: PythonTargetLike | None, frame: PyFrame
    ) -> Location:
        key = (pid, frame.code, frame.offset)
        loc = self._py.get(key)
        if loc is not None:
            return loc
        known = frame.offset != OFFSET_MAX  # a saturated offset's line is unknown
        name = None
        if self._python is not None:
            name = self._python.frame(pid, frame.code, frame.byte_offset if known else None)
        version = target.version if target is not None else None
        mapping = self._py_mappings.get(version)
        if mapping is None:
            mapping = Mapping(0, PYTHON_SPACE, 0, cpython_mapping_name(version))
            self._py_mappings[version] = mapping
        if name is None:
            self.python_unnamed += 1
            frames = (Frame(f"[python code {frame.code:#x}]"),)
            return Location(frame.code, mapping, frames, CPYTHON)  # asked again next time
        py = Frame(name.qualname, name.filename, name.line, name.firstlineno)
        loc = Location(frame.code, mapping, (py,), CPYTHON)
        if len(self._py) >= self._max_cached:
            self._py.clear()
        self._py[key] = loc
        return loc

    def _kernel_location(self, address: int, is_return: bool) -> Location:
        ck = (address, is_return)
        loc = self._kernel.get(ck) or self._missed.get((-1, address, is_return))
        if loc is None:
            r = self._sym.resolve_kernel(address - 1 if is_return else address)
            mapping = self._kernel_mapping if address >= KERNEL_START else None
            loc = self._location(address, mapping, r, KERNEL)
            if not loc.frames:
                self._missed[(-1, address, is_return)] = loc
            else:
                if len(self._kernel) >= self._max_cached:
                    self._kernel.clear()
                self._kernel[ck] = loc
        return loc

    def _location(
        self, address: int, mapping: Mapping | None, r: ResolvedLike, kind: str
    ) -> Location:
        """One Frame per inlined function, innermost first (pprof Lines)."""
        if r.function is None:
            return Location(address, mapping, (), kind)
        frames = tuple(
            Frame(ln.function, ln.file, ln.line, ln.start_line, ln.system_name) for ln in r.lines
        )
        return Location(address, mapping, frames or (Frame(r.function),), kind)


def _function(loc: Location) -> str:
    """The function a location's address lies in (its outermost inline frame)."""
    return loc.frames[-1].function if loc.frames else ""


def own_frames(kernel: Sequence[Location]) -> int:
    """How many frames at the leaf end of a kernel stack (leaf first) are the
    profiler's own: a sched_switch stack reads bpf_prog_<tag>_<name> <-
    bpf_trace_run4 <- [__traceiter_sched_switch <-] __schedule. How many
    there are depends on the attach type and on how many probes share the
    tracepoint (a second one adds __traceiter_*), so bpf_get_stackid's skip
    count cannot be fixed at compile time; they are dropped here instead.

    Every frame leafward of the first trampoline is the program's whatever
    its name: kallsyms read after the program was unloaded names its
    address after whatever symbol precedes it (another program, an
    init-text function). Without a trampoline, leading bpf_prog_* frames
    are dropped. A stack that is nothing but such frames is kept whole."""
    first = next(
        (
            i
            for i, loc in enumerate(kernel[:PROGRAM_FRAMES])
            if _function(loc).startswith(TRAMPOLINES)
        ),
        None,
    )
    drop = 0
    if first is not None:
        drop = first + 1
        while drop < len(kernel) and _function(kernel[drop]).startswith(TRAMPOLINES):
            drop += 1
    else:
        while drop < len(kernel) and _function(kernel[drop]).startswith(BPF_PROGRAM):
            drop += 1
    return drop if drop < len(kernel) else 0


def _lookup(addresses: Sequence[int], i: int) -> int:
    """Where the i-th native frame is looked up: a caller at its return address - 1."""
    return addresses[i] - 1 if i > 0 else addresses[i]


def _loop_frames(
    target: PythonTargetLike, addresses: Sequence[int], native: Sequence[Location]
) -> list[int]:
    """Indices (leaf first) of the native frames that are the eval loop."""
    loops = []
    for i, loc in enumerate(native):
        at = _lookup(addresses, i)
        if target.in_eval(at) or (not loc.frames and target.in_split_loop(at)):
            loops.append(i)
    return loops


def _runs(loops: Sequence[int]) -> dict[int, int]:
    """Runs of adjacent loop frames: first index -> length."""
    runs: dict[int, int] = {}
    start = loops[0]
    for prev, i in zip(loops, [*loops[1:], -1], strict=True):
        if i != prev + 1:
            runs[start] = prev - start + 1
            start = i
    return runs


def _outer_run(target: PythonTargetLike | None, addresses: Sequence[int]) -> int:
    """Where Python frames go when no loop frame is found: the index (leaf
    first) of the leafmost frame of the outermost run of the interpreter's
    own frames, else the root end."""
    inside = [
        target is not None and target.in_text(_lookup(addresses, i)) for i in range(len(addresses))
    ]
    if not any(inside):
        return len(addresses)
    at = max(i for i, hit in enumerate(inside) if hit)
    while at > 0 and inside[at - 1]:
        at -= 1
    return at
