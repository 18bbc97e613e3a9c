"""Is BPF usable here at all? The two probes `bpfprof check` runs first.

Both go around the agent's normal path on purpose: the bpf() syscall straight
through libc (BCC may be the very thing that is missing), and BCC imported
into this process (the agent itself only imports it in its loader child) to
report its version and the reason it cannot load.
"""

from __future__ import annotations

import ctypes
import os
import struct

BPF_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2


def bpf_map_create_errno(machine: str) -> int | None:
    """0 if the kernel lets us create a one-entry array map, else the errno.

    None where we do not know the syscall number. This is the cheapest proof
    that the bpf() syscall exists and that we may use it; it goes through
    libc directly because BCC may be the very thing that is missing.
    """
    nr = BPF_SYSCALL_NR.get(machine)
    if nr is None:
        return None
    attr = ctypes.create_string_buffer(64)  # zero tail: the kernel requires it
    struct.pack_into("=5I", attr, 0, BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_MAP_CREATE), attr, ctypes.c_uint(64))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def bcc_status() -> tuple[str | None, str | None]:
    """(bcc version, None) if this interpreter can use BCC, else (None, why not)."""
    try:
        import bcc
    except Exception as e:  # ImportError, or OSError when libbcc.so cannot load
        return None, f"{type(e).__name__}: {e}"
    if not hasattr(bcc, "BPF"):
        return None, f"the `bcc` at {bcc.__file__} is not BCC (PyPI's unrelated `bcc` package?)"
    return str(getattr(bcc, "__version__", "unknown version")), None
