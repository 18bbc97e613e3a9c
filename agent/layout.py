"""The Python mirror of bpf/common.h, described once.

tests/bpf/test_layout.py compares these sizes and offsets with the types BCC
built from the C source, so a change on one side that is not made on the
other fails a test instead of silently misreading the maps.
"""

from __future__ import annotations

import ctypes
import enum

TASK_COMM_LEN = 16


class Counter(enum.IntEnum):
    """Indices of the per-CPU self-metrics array `counters` (enum counter)."""

    SAMPLES = 0
    MAP_FULL = 1
    USER_COLLISION = 2
    KERNEL_COLLISION = 3
    STACK_ERROR = 4
    EVENT_LOST = 5
    TARGETS_FULL = 6


COUNTER_SLOTS = 8  # CTR_MAX


class SampleKey(ctypes.Structure):
    """struct sample_key: one entry of the counts hash."""

    _fields_ = (
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("user_stack_id", ctypes.c_int32),
        ("kernel_stack_id", ctypes.c_int32),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    )


class ProcessEvent(ctypes.Structure):
    """struct process_event: a ring-buffer record."""

    _fields_ = (("pid", ctypes.c_uint32), ("kind", ctypes.c_uint32))


EVENT_NEW_PROCESS = 1

# bpf_get_stackid errors (negative errno) that a stack id can carry.
EFAULT = 14  # no stack of this kind: a kernel thread has no user stack
EEXIST = 17  # hash-bucket collision in the stack map
