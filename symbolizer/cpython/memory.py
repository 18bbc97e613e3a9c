"""Bounded reads of another process's memory with process_vm_readv(2).

Python frames name code objects by address; their names, files and line
tables live in the profiled process. process_vm_readv copies them in one
syscall without stopping the process (ptrace would) and without an open
/proc/PID/mem file per process. The os module has no binding, so it is
called through ctypes.

Every read is bounded (`max_read` bytes, MAX_READ by default): an
address or a length comes from the other process and may be anything.
A read that fails or comes back short raises MemoryReadError with the
errno: ESRCH (the process is gone), EFAULT (nothing mapped there), EPERM
(not allowed: another user without CAP_SYS_PTRACE). The caller counts it
and moves on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

MAX_READ = 64 << 10  # a line table of a huge function is ~10 KiB
_U64, _I32, _U8 = struct.Struct("<Q"), struct.Struct("<i"), struct.Struct("<B")


class MemoryReadError(OSError):
    """A read of another process failed; errno tells why."""


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_readv = _libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]


class ProcessMemory:
    """Reads of one process's memory, each at most `max_read` bytes."""

    def __init__(self, pid: int, max_read: int = MAX_READ) -> None:
        self.pid = pid
        self.max_read = max_read

    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at `address`, or MemoryReadError."""
        if not 0 <= size <= self.max_read:
            raise MemoryReadError(errno.E2BIG, f"read of {size} bytes (most {self.max_read})")
        if not 0 < address < 1 << 64 or address + size > 1 << 64:
            raise MemoryReadError(errno.EFAULT, f"bad address {address:#x}")
        if size == 0:
            return b""
        buf = ctypes.create_string_buffer(size)
        local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = _IoVec(address, size)
        got = _readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise MemoryReadError(err, f"pid {self.pid} at {address:#x}: {os.strerror(err)}")
        if got != size:
            raise MemoryReadError(
                errno.EFAULT, f"pid {self.pid} at {address:#x}: {got} of {size} bytes"
            )
        return buf.raw

    def u64(self, address: int) -> int:
        return int(_U64.unpack(self.read(address, 8))[0])

    def pointer(self, address: int) -> int:
        """A pointer stored at `address` (x86_64: a u64)."""
        return self.u64(address)

    def i32(self, address: int) -> int:
        return int(_I32.unpack(self.read(address, 4))[0])

    def u8(self, address: int) -> int:
        return int(_U8.unpack(self.read(address, 1))[0])
