"""Opening files that another user controls, as root, safely.

The agent runs as root and reads files that unprivileged processes
control: their binaries, their JIT perf maps, the debug files their
binaries name. Every such open goes through here, so that

- a symlink is never followed out of the process's own root: paths are
  resolved with openat2(RESOLVE_IN_ROOT) against a directory fd of that
  root, the way the kernel resolves them for a process chrooted there
  (so `/lib -> usr/lib` inside a container still works, but a link to
  `/etc/shadow` lands on the container's own /etc/shadow, never the
  host's); `nofollow=True` refuses a symlink as the last component too;
- nothing but a regular file is ever read: O_NONBLOCK makes opening a
  FIFO return at once (a FIFO with no writer would block open() forever),
  and fstat() then refuses FIFOs, devices, sockets and directories;
- the owner can be required (perf's own rule for /tmp/perf-PID.map: the
  file must belong to the process's user).

UnsafeFile is an OSError, so callers that already survive a vanished file
survive a refused one the same way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from typing import BinaryIO

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_SYS_OPENAT2 = 437  # x86_64 and aarch64 alike (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_IN_ROOT = 0x10
_OPEN_HOW = struct.Struct("=QQQ")  # flags, mode, resolve

_libc: ctypes.CDLL | None = None


class UnsafeFile(OSError):
    """A file that must not be read: not a regular file, or the wrong owner."""


def check_regular(fd: int, path: str, owner: int | None = None) -> os.stat_result:
    """fstat `fd`; UnsafeFile unless it is a regular file (owned by `owner`)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(errno.EINVAL, "not a regular file", path)
    if owner is not None and st.st_uid != owner:
        raise UnsafeFile(errno.EPERM, f"owned by uid {st.st_uid}, not {owner}", path)
    return st


def open_regular(
    path: str, *, owner: int | None = None, nofollow: bool = True, dir_fd: int | None = None
) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (of `owner`).

    With `nofollow` a symlink as the last component fails with ELOOP.
    Intermediate components are resolved as usual: use open_in_root for a
    path inside a directory another user controls.
    """
    flags = _OPEN_FLAGS | (os.O_NOFOLLOW if nofollow else 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    return _wrap(fd, path, owner)


def open_in_root(
    root: str,
    path: str,
    *,
    owner: int | None = None,
    nofollow: bool = False,
    symlinks: bool = True,
) -> BinaryIO:
    """Open `path` as a process whose root directory is `root` would see it.

    `root` is "" or "/" for the host's root, or e.g. "/proc/PID/root".
    Every symlink on the way (and the last component's, unless
    `nofollow`) is resolved inside `root`; ".." stops at it. Without
    `symlinks` a symlink in any component fails (ELOOP). The result
    must be a regular file (of `owner`).
    """
    root_fd = os.open(root or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        resolve = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
        resolve |= 0 if symlinks else _RESOLVE_NO_SYMLINKS
        flags = _OPEN_FLAGS | (os.O_NOFOLLOW if nofollow else 0)
        fd = _openat2(root_fd, path.lstrip("/") or ".", flags, resolve)
    finally:
        os.close(root_fd)
    return _wrap(fd, f"{root}{path}", owner)


def read_bounded(f: BinaryIO, limit: int) -> bytes:
    """At most `limit` bytes; OSError(EFBIG) if the file holds more."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


def _wrap(fd: int, path: str, owner: int | None) -> BinaryIO:
    try:
        check_regular(fd, path, owner)
        # a regular file ignores O_NONBLOCK; clear it all the same so no
        # later read can see EAGAIN
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    how = ctypes.create_string_buffer(_OPEN_HOW.pack(flags, 0, resolve), _OPEN_HOW.size)
    encoded = os.fsencode(path)
    fd = int(
        _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(encoded),
            how,
            ctypes.c_size_t(_OPEN_HOW.size),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd
