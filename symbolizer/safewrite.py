"""Writing files as root where other users may be: private and unfollowable.

Profiles name every process on the host and their stacks; the status file,
the spool and the caches hold the same. So the agent's directories are 0700
and its files 0600, whatever the umask.

Every file is written under a fresh temporary name created with
O_CREAT|O_EXCL|O_NOFOLLOW inside the target directory (opened once,
without following a symlink), then renamed over the final name: rename
replaces a planted symlink rather than writing through it, and O_EXCL
refuses a planted temporary name.

It lives in the symbolizer, the lower layer, because the symbol disk cache
writes through it too; agent/safewrite.py adds the agent's config errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def private_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create `path` (and parents) with `mode`; an existing directory of
    ours is tightened to `mode`. OSError if `path` is a symlink, not a
    directory, belongs to another user (it could be swapped under us), or
    is writable by others (a shared directory such as /tmp is never ours)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (a symlink is refused)", str(path))
    if st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by this agent", str(path))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) & ~mode:
        # a shared directory (/tmp, mode 1777): others may have planted names
        # in it, and tightening it would break them
        mode_text = f"{stat.S_IMODE(st.st_mode):o}"
        raise OSError(errno.EPERM, f"writable by other users (mode {mode_text})", str(path))
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    return path


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` as a new file with `mode`, atomically."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, _TMP_FLAGS, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # the umask may have cleared bits we want
                f.write(data)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
