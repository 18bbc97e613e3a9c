"""The Python mirror of bpf/unwind.h, described once.

tests/bpf/test_unwind.py compares these sizes with the types BCC built
from the C source, so the two sides cannot drift apart silently.
"""

from __future__ import annotations

import ctypes
import enum
import struct

from agent.unwind.rows import ROW

MAX_FRAMES = 127  # UNWIND_MAX_FRAMES: PERF_MAX_STACK_DEPTH, as bpf_get_stackid

# A RawStack's user_error for a stack deeper than MAX_FRAMES: its frames are
# kept, and the resolver marks the missing root with a pseudo-frame.
E2BIG = 7

# struct unwound_stack.flags
STACK_TRUNCATED = 1
STACK_COMPLETE = 2
STACK_FP_USED = 4
STACK_READ_ERROR = 8
STACK_UNSUPPORTED = 16
STACK_NEW_MAPPING = 32
STACK_DEFERRED = 64  # its raw stack went to user space (UNWIND_RAW): `hash` names it

# struct unwind_raw_stack (UNWIND_RAW): hash, ip, sp, bp, base, pid, pages;
# then `pages` pages of the stack from `base` (the page holding sp).
RAW_HEADER = struct.Struct("<QQQQQII")
PAGE = 4096


class UnwindStat(enum.IntEnum):
    """Indices of the per-CPU array `unwind_stats` (enum unwind_stat)."""

    STACKS = 0
    FRAMES = 1
    TRUNCATED = 2
    NO_PROC = 3
    FP_FRAMES = 4
    READ_ERROR = 5
    UNSUPPORTED = 6
    NO_REGS = 7
    RAW = 8  # raw stacks sent to user space
    RAW_LOST = 9  # not sent: the ring buffer was full
    RAW_CAPPED = 10  # not sent: the process used its budget before it was loaded
    NEW_STACKS = 11  # ustacks buckets taken: how full the unwound-stack maps are


class UnwindRow(ctypes.Structure):
    """struct unwind_row (agent.unwind.rows.ROW packs the same bytes)."""

    _fields_ = (
        ("pc", ctypes.c_uint32),
        ("cfa_offset", ctypes.c_int32),
        ("rbp_offset", ctypes.c_int16),
        ("cfa_type", ctypes.c_uint8),
        ("rbp_type", ctypes.c_uint8),
    )


class UnwindMapping(ctypes.Structure):
    """struct unwind_mapping: one executable mapping of a process."""

    _fields_ = (
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("base", ctypes.c_uint64),
        ("first_row", ctypes.c_uint32),
        ("row_count", ctypes.c_uint32),
    )


class UnwindProc(ctypes.Structure):
    """struct unwind_proc: where a process's mappings are in unwind_maps."""

    _fields_ = (("first_map", ctypes.c_uint32), ("map_count", ctypes.c_uint32))


MAPPING = struct.Struct("<QQQII")
assert ROW.size == ctypes.sizeof(UnwindRow) and MAPPING.size == ctypes.sizeof(UnwindMapping)


def pack_mapping(start: int, end: int, base: int, first_row: int, row_count: int) -> bytes:
    return MAPPING.pack(start, end, base & 0xFFFFFFFFFFFFFFFF, first_row, row_count)
