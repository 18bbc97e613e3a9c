"""The Python mirror of bpf/python.h: its structs, flags and -D flags.

What python.h appends to a stack is decoded by symbolizer/cpython/frames.py
(re-exported here): user space needs it without the kernel's mirrors.

tests/bpf/test_python_walk.py compares the ctypes structs with the types
BCC built from the C source.
"""

from __future__ import annotations

import ctypes
import enum

from symbolizer.cpython.frames import (
    ADDR_MASK,
    OFFSET_MAX,
    OFFSET_SHIFT,
    PY_ENTRY,
    PY_FRAME,
    PyFrame,
    PyStackError,
    SplitStack,
    activations,
    decode_frame,
    split,
)

__all__ = [
    "ADDR_MASK",
    "OFFSET_MAX",
    "OFFSET_SHIFT",
    "PY_ENTRY",
    "PY_FRAME",
    "PyFrame",
    "PyStackError",
    "SplitStack",
    "activations",
    "decode_frame",
    "split",
]

MAX_FRAMES = 128  # PY_MAX_FRAMES: frames followed per walk, shims included

# struct unwound_stack.flags beside unwind.h's STACK_* (agent.unwind.layout):
# bits of their own (STACK_PYTHON once shared STACK_DEFERRED's 64, and every
# Python stack was taken for a deferred one and marked truncated)
STACK_PYTHON = 256
STACK_PY_TRUNCATED = 512


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
    CODES_NEW = 9
    CODES_DROPPED = 10
    CODES_SKIPPED = 11


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
            "code_filename",
        )
    )


class PyProc(ctypes.Structure):
    """struct py_proc: a CPython process's roots, as the walker needs them."""

    _fields_ = (
        ("runtime", ctypes.c_uint64),
        ("code_type", ctypes.c_uint64),
        ("layout", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    )


class PyCodeRef(ctypes.Structure):
    """struct py_code_ref: a (process, code object) pair the walker met
    first; `mark` (py_code_mark) tells code objects at one address apart."""

    _fields_ = (
        ("pid", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
        ("code", ctypes.c_uint64),
        ("mark", ctypes.c_uint64),
    )


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


def pack_proc(runtime: int, code_type: int, layout_index: int, generation: int = 0) -> PyProc:
    """A process's entry: `runtime` and `code_type` are runtime addresses
    (load bias + the ELF's st_value); code_type 0 skips the code-object check.
    `generation` keys the code objects the walker has sent for the process:
    a new one (a new image after an exec) has them sent again."""
    return PyProc(
        runtime=runtime,
        code_type=code_type,
        layout=layout_index,
        flags=0,
        generation=generation & 0xFFFFFFFF,
    )


def python_cflags(fsbase_offset: int, max_frames: int = MAX_FRAMES) -> list[str]:
    """The -D flags python.h needs: where the task keeps its FS base
    (agent/unwind/taskbtf.py reads it from the running kernel's BTF)."""
    if fsbase_offset <= 0 or max_frames <= 0:
        raise ValueError("the FS base offset and the frame limit must be positive")
    return [f"-DTASK_FSBASE_OFFSET={fsbase_offset}", f"-DPY_MAX_FRAMES={max_frames}"]
