"""Stack resolution: raw instruction pointers to model Locations.

Every address but a stack's first is a return address: it points after the
call, possibly into the next function or past the end of a noreturn caller.
So callers are looked up at address - 1 (as perf and pprof do), while the
Location keeps the address the kernel gave.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Protocol

from agent.model import KERNEL_MAPPING_NAME, Frame, Location, Mapping, RawKey

# Kernel addresses live in the top half of the address space on x86-64 and
# arm64, so one mapping covering it holds kernel text, modules and BPF code.
KERNEL_START = 1 << 63
KERNEL_LIMIT = 2**64 - 1
MAX_CACHED = 1 << 15  # locations kept per kind (user, kernel) before starting over


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


def lost_stack(what: str, error: int) -> Location | None:
    """A pseudo-location that keeps a sample whose stack the kernel lost, or
    marks one cut short (-E2BIG: deeper than the unwinder's frame limit).

    -EFAULT only means there is no stack of that kind (a kernel thread's user
    stack, a user-mode sample's kernel stack): nothing was lost."""
    if error in (0, -errno.EFAULT):
        return None
    if error == -errno.E2BIG:  # the frames are there, but the outermost ones are not
        return Location(address=0, frames=(Frame(f"[{what} stack truncated]"),))
    reason = "stack-map collision" if error == -errno.EEXIST else f"error {-error}"
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

    def __init__(self, symbolizer: FrameSymbolizer, max_cached: int = MAX_CACHED) -> None:
        self._sym = symbolizer
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
        """Ask again for what could not be symbolized (the rest stays cached)."""
        self._missed.clear()

    def forget(self, pid: int) -> None:
        """Drop a process's cached locations: re-observed, or gone."""
        self._user_count -= len(self._user.pop(pid, ()))

    def locations(self, key: RawKey) -> tuple[Location, ...]:
        stack = key.stack
        out = [self._kernel_location(a, i > 0) for i, a in enumerate(stack.kernel)]
        lost = lost_stack("kernel", stack.kernel_error)
        if lost:
            out.append(lost)
        if stack.user:
            cache = self._user.get(key.pid)
            if cache is None:
                cache = self._user[key.pid] = {}
            out.extend(
                self._user_location(cache, key.pid, a, i > 0) for i, a in enumerate(stack.user)
            )
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
            loc = self._location(address, mapping, r, "native")
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

    def _kernel_location(self, address: int, is_return: bool) -> Location:
        ck = (address, is_return)
        loc = self._kernel.get(ck) or self._missed.get((-1, address, is_return))
        if loc is None:
            r = self._sym.resolve_kernel(address - 1 if is_return else address)
            mapping = self._kernel_mapping if address >= KERNEL_START else None
            loc = self._location(address, mapping, r, "kernel")
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
