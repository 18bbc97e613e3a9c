"""Stack resolution: raw instruction pointers to model Locations.

Every address but a stack's first is a return address: it points after the
call, possibly into the next function or past the end of a noreturn caller.
So callers are looked up at address - 1 (as perf and pprof do), while the
Location keeps the address the kernel gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent.layout import EEXIST, EFAULT
from agent.model import KERNEL_MAPPING_NAME, Frame, Location, Mapping, RawKey
from agent.unwind.layout import E2BIG

# Kernel addresses live in the top half of the address space on x86-64 and
# arm64, so one mapping covering it holds kernel text, modules and BPF code.
KERNEL_START = 1 << 63
KERNEL_LIMIT = 2**64 - 1


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
    if error in (0, -EFAULT):
        return None
    if error == -E2BIG:  # the frames are there, but the outermost ones are not
        return Location(address=0, frames=(Frame(f"[{what} stack truncated]"),))
    reason = "stack-map collision" if error == -EEXIST else f"error {-error}"
    return Location(address=0, frames=(Frame(f"[{what} stack lost: {reason}]"),))


class StackResolver:
    """Resolves RawKeys to location tuples (leaf first), caching per address."""

    def __init__(self, symbolizer: FrameSymbolizer) -> None:
        self._sym = symbolizer
        self._user: dict[tuple[int, int, bool], Location] = {}
        self._kernel: dict[tuple[int, bool], Location] = {}
        self._kernel_mapping = Mapping(KERNEL_START, KERNEL_LIMIT, 0, KERNEL_MAPPING_NAME)
        self.misses = 0

    def locations(self, key: RawKey) -> tuple[Location, ...]:
        stack = key.stack
        out = [self._kernel_location(a, i > 0) for i, a in enumerate(stack.kernel)]
        lost = lost_stack("kernel", stack.kernel_error)
        if lost:
            out.append(lost)
        out.extend(self._user_location(key.pid, a, i > 0) for i, a in enumerate(stack.user))
        lost = lost_stack("user", stack.user_error)
        if lost:
            out.append(lost)
        return tuple(out)

    def _user_location(self, pid: int, address: int, is_return: bool) -> Location:
        ck = (pid, address, is_return)
        loc = self._user.get(ck)
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
            self._user[ck] = loc
        return loc

    def _kernel_location(self, address: int, is_return: bool) -> Location:
        ck = (address, is_return)
        loc = self._kernel.get(ck)
        if loc is None:
            r = self._sym.resolve_kernel(address - 1 if is_return else address)
            mapping = self._kernel_mapping if address >= KERNEL_START else None
            loc = self._location(address, mapping, r, "kernel")
            self._kernel[ck] = loc
        return loc

    def _location(
        self, address: int, mapping: Mapping | None, r: ResolvedLike, kind: str
    ) -> Location:
        """One Frame per inlined function, innermost first (pprof Lines)."""
        if r.function is None:
            self.misses += 1
            return Location(address, mapping, (), kind)
        frames = tuple(
            Frame(ln.function, ln.file, ln.line, ln.start_line, ln.system_name) for ln in r.lines
        )
        return Location(address, mapping, frames or (Frame(r.function),), kind)
