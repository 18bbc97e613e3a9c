"""The Python frames bpf/python.h appends to a stack, decoded.

python.h appends one tagged u64 per Python frame after a stack's native
frames (struct unwound_stack.ips): bit 63 marks a Python frame, bit 62 the
outermost frame of one C-level _PyEval_EvalFrameDefault activation, bits
48-61 the instruction offset in code units, bits 0-47 the code object's
address. User space splits a stack into its native and Python parts and
groups the Python frames per activation, so each group can take the place
of the matching native _PyEval_EvalFrameDefault frame (innermost first on
both sides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PY_FRAME = 1 << 63
PY_ENTRY = 1 << 62
OFFSET_SHIFT = 48
OFFSET_MAX = 0x3FFF  # an offset this large may have been saturated
ADDR_MASK = (1 << 48) - 1


class PyStackError(ValueError):
    """Entries that python.h cannot have written (a Python frame before a native one)."""


@dataclass(frozen=True)
class PyFrame:
    code: int  # address of the code object
    offset: int  # instruction offset in code units (OFFSET_MAX: maybe saturated)
    entry: bool  # the outermost frame of one _PyEval_EvalFrameDefault activation

    @property
    def byte_offset(self) -> int:
        """The offset in bytes of bytecode, as symbolizer/cpython's line
        tables take it (a code unit is two bytes in every version)."""
        return 2 * self.offset


@dataclass(frozen=True)
class SplitStack:
    native: tuple[int, ...]  # leaf first, as unwind.h wrote them
    python: tuple[PyFrame, ...]  # innermost first


def decode_frame(entry: int) -> PyFrame:
    if not entry & PY_FRAME:
        raise PyStackError(f"{entry:#x} is not a Python frame")
    offset = (entry >> OFFSET_SHIFT) & OFFSET_MAX
    return PyFrame(entry & ADDR_MASK, offset, bool(entry & PY_ENTRY))


def split(ips: Sequence[int]) -> SplitStack:
    """A stack's native addresses, then its Python frames."""
    first = next((i for i, ip in enumerate(ips) if ip & PY_FRAME), len(ips))
    python = tuple(decode_frame(ip) for ip in ips[first:])
    return SplitStack(tuple(ips[:first]), python)


def activations(python: Sequence[PyFrame]) -> list[tuple[PyFrame, ...]]:
    """The Python frames grouped per C-level activation, innermost first:
    each group ends with its entry frame. The frames after the last entry
    (a chain cut by the limit) form a last group without one."""
    groups: list[tuple[PyFrame, ...]] = []
    current: list[PyFrame] = []
    for frame in python:
        current.append(frame)
        if frame.entry:
            groups.append(tuple(current))
            current = []
    if current:
        groups.append(tuple(current))
    return groups
