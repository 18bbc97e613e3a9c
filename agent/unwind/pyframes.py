"""The Python mirror of bpf/python.h, and the decoder of what it appends.

python.h appends one tagged u64 per Python frame after a stack's native
frames (struct unwound_stack.ips): bit 63 marks a Python frame, bit 62 the
outermost frame of one C-level _PyEval_EvalFrameDefault activation, bits
48-61 the instruction offset in code units, bits 0-47 the code object's
address. User space splits a stack into its native and Python parts and
groups the Python frames per activation, so each group can take the place
of the matching native _PyEval_EvalFrameDefault frame (innermost first on
both sides).

tests/bpf/test_python_walk.py compares the ctypes structs with the types
BCC built from the C source.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence
from dataclasses import dataclass

MAX_FRAMES = 128  # PY_MAX_FRAMES: frames followed per walk, shims included

PY_FRAME = 1 << 63
PY_ENTRY = 1 << 62
OFFSET_SHIFT = 48
OFFSET_MAX = 0x3FFF  # an offset this large may have been saturated
ADDR_MASK = (1 << 48) - 1

# struct unwound_stack.flags beside unwind.h's STACK_*
STACK_PYTHON = 64
STACK_PY_TRUNCATED = 128


class PyStat(enum.IntEnum):
    """Indices of the per-CPU array `python_stats` (enum py_stat)."""

    STACKS = 0
    FRAMES = 1
    TRUNCATED = 2
    NO_TSTATE = 3
    READ_ERROR = 4
    NO_LAYOUT = 5
    BAD_CODE = 6
    CACHED = 7
    SEARCHES = 8


class PyLayout(ctypes.Structure):
    """struct py_layout: the walk fields of symbolizer/cpython's WalkLayout."""

    _fields_ = tuple(
        (name, ctypes.c_int32)
        for name in (
            "runtime_interpreters_head",
            "interp_tstate_head",
            "tstate_next",
            "tstate_thread_id",
            "tstate_frame",
            "cframe_current_frame",
            "frame_previous",
            "frame_code",
            "code_tag_mask",
            "frame_instr",
            "instr_kind",
            "code_adaptive",
            "frame_owner",
            "owner_cstack",
            "frame_is_entry",
            "owner_skip_from",
        )
    )


class PyProc(ctypes.Structure):
    """struct py_proc: a CPython process's roots, as the walker needs them."""

    _fields_ = (
        ("runtime", ctypes.c_uint64),
        ("code_type", ctypes.c_uint64),
        ("layout", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class PyStackError(ValueError):
    """Entries that python.h cannot have written (a Python frame before a native one)."""


def pack_layout(layout: object) -> PyLayout:
    """The C struct of a WalkLayout (any object with its field names). A
    field the layout lacks is -1, "absent", as for an older version."""
    out = PyLayout()
    for name, *_ in PyLayout._fields_:
        value = getattr(layout, name, -1)
        if not isinstance(value, int) or not -(1 << 31) <= value < 1 << 31:
            raise ValueError(f"layout field {name}: {value!r} is not a 32-bit int")
        setattr(out, name, value)
    return out


def pack_proc(runtime: int, code_type: int, layout_index: int) -> PyProc:
    """A process's entry: `runtime` and `code_type` are runtime addresses
    (load bias + the ELF's st_value); code_type 0 skips the code-object check."""
    return PyProc(runtime=runtime, code_type=code_type, layout=layout_index, flags=0)


def python_cflags(fsbase_offset: int, max_frames: int = MAX_FRAMES) -> list[str]:
    """The -D flags python.h needs: where the task keeps its FS base
    (agent/unwind/taskbtf.py reads it from the running kernel's BTF)."""
    if fsbase_offset <= 0 or max_frames <= 0:
        raise ValueError("the FS base offset and the frame limit must be positive")
    return [f"-DTASK_FSBASE_OFFSET={fsbase_offset}", f"-DPY_MAX_FRAMES={max_frames}"]


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
