"""Turn on the kernel's BPF run-time statistics for the benchmark's lifetime.

BPF_ENABLE_STATS (Linux 5.8) returns an fd that keeps run_time_ns/run_cnt
counting while it is open. It is the same reference-counted switch that the
sysctl kernel.bpf_stats_enabled flips, but it needs no restoring: the kernel
turns the statistics off again when the fd closes, even if the benchmark
dies, and it does not switch them off under another user who enabled them.
"""

from __future__ import annotations

import ctypes
import os
import platform

BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYS_BPF = {"x86_64": 321, "aarch64": 280}


class StatsUnavailable(Exception):
    pass


def enable_run_time_stats() -> int:
    """An fd that keeps BPF statistics on until it is closed."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise StatsUnavailable(f"no bpf syscall number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint32(BPF_STATS_RUN_TIME)
    fd = libc.syscall(number, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        errno = ctypes.get_errno()
        raise StatsUnavailable(f"BPF_ENABLE_STATS failed: {os.strerror(errno)}")
    return int(fd)
