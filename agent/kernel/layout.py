"""The Python mirror of bpf/common.h, described once.

tests/bpf/test_cpu_source.py and tests/bpf/test_profile_programs.py compare
these sizes and offsets with the types BCC built from the C source, so a
change on one side that is not made on the other fails a test instead of
silently misreading the maps.
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
    PENDING_FULL = 7
    LIVE_FULL = 8
    SAMPLE_LOST = 9


COUNTER_SLOTS = 16  # CTR_MAX


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
EVENT_MAPS_CHANGED = 2  # the unwinder met a mapping it was not told of (dlopen)

# bpf_get_stackid errors (negative errno) that a stack id can carry.
EFAULT = 14  # no stack of this kind: a kernel thread has no user stack
EEXIST = 17  # hash-bucket collision in the stack map

# The wait programs tag a stack id with its generation (bpf/waits.h).
STACK_GEN_SHIFT = 23
STACK_GEN_MASK = 0xFF


class WaitValue(ctypes.Structure):
    """struct wait_value: the off-CPU and lock counts' value."""

    _fields_ = (("count", ctypes.c_uint64), ("total_ns", ctypes.c_uint64))


class LockKey(ctypes.Structure):
    """struct lock_key: a sample_key and the kind of wait."""

    _fields_ = (("base", SampleKey), ("kind", ctypes.c_uint32), ("pad", ctypes.c_uint32))


# LOCK_KIND_*: what kind of wait a lock sample is, as the kernel can tell.
LOCK_KIND_MUTEX = 1
LOCK_KIND_WAIT = 2
LOCK_KIND_CONDVAR = 3
LOCK_KIND_KERNEL = 4

ALLOC_EVENT_ALLOC = 1
ALLOC_EVENT_FREE = 2
ALLOC_EVENT_EXIT = 3
ALLOC_EVENT_UNTRACKED = 4
ALLOC_EVENT_EXEC = 5  # a targeted process exec'd: reload its unwind tables
ALLOC_EVENT_MAPS_CHANGED = 6  # the walker met a mapping it was not told of (dlopen)
ALLOC_EVENT_FORK = 7  # a targeted process forked (FOLLOW_FORKS): probe the child
ALLOC_MAX_FRAMES = 127


class AllocFreeEvent(ctypes.Structure):
    """struct alloc_free_event: a sampled block freed, or a process gone."""

    _fields_ = (("kind", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("addr", ctypes.c_uint64))


class AllocEvent(ctypes.Structure):
    """struct alloc_event: one sampled allocation with its user stack."""

    _fields_ = (
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("addr", ctypes.c_uint64),
        ("tid", ctypes.c_uint32),
        ("stack_bytes", ctypes.c_int32),
        ("size", ctypes.c_uint64),
        ("stack_flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
        ("ips", ctypes.c_uint64 * ALLOC_MAX_FRAMES),
    )
