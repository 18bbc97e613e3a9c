"""Write a profile to a file in the format asked for, atomically and privately.

The file appears complete or not at all: a Ctrl-C or a full disk during the
write never leaves a truncated profile behind under the final name. It names
the host's processes and their stacks, so it is 0600 (as perf writes
perf.data): root's profile is root's until root shares it (chmod, chown).

`bpfprof record` may run as root in a directory others can write (/tmp), so
the file is created under a fresh O_EXCL|O_NOFOLLOW temporary name and
renamed over the final one: a symlink planted under either name is
replaced, never written through. The directory itself must not be a
symlink nor belong to another user (root, the caller, or the user who ran
sudo own it: anyone else could swap it between check and write). And since a
recording can take minutes, `check_destination` proves the directory
writable before anything is attached, with a probe file created and removed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.errors import UsageError
from agent.exporters import ResourceOf, encode
from agent.model import Profile
from agent.safewrite import write_atomic

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROBE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_profile(
    profile: Profile, path: Path, fmt: str, resource: ResourceOf | None = None
) -> int:
    """Encode and write; returns the number of bytes written."""
    return write_atomically(path, encode(profile, fmt, resource))


def write_atomically(path: Path, data: bytes) -> int:
    """Write `data` under a temporary name, then rename it to `path` (0600)."""
    os.close(_open_dir(path))
    try:
        write_atomic(path, data)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    return len(data)


def check_destination(path: Path) -> None:
    """UsageError now, rather than after the recording, if `path` cannot be
    written: no such directory, a symlink or another user's directory, a
    directory under the name, a read-only mount, no permission, no space."""
    dir_fd = _open_dir(path)
    try:
        try:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise UsageError(f"cannot write {path}: it is a directory")
        probe = f".{path.name}.{secrets.token_hex(6)}.probe"
        try:
            os.close(os.open(probe, _PROBE_FLAGS, 0o600, dir_fd=dir_fd))
            os.unlink(probe, dir_fd=dir_fd)
        except OSError as e:
            raise UsageError(
                f"cannot write {path}: {directory_of(path)}: {e.strerror or e}"
            ) from None
    finally:
        os.close(dir_fd)


def directory_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def trusted_owners(env: Mapping[str, str]) -> set[int]:
    """Root, us, and the user who ran `sudo bpfprof record` (their own
    directory is the usual destination, and they already hold root)."""
    owners = {0, os.geteuid()}
    if env.get("SUDO_UID", "").isdigit():
        owners.add(int(env["SUDO_UID"]))
    return owners


def _open_dir(path: Path) -> int:
    """A descriptor of `path`'s directory, if it is a real one of root's or ours."""
    directory = directory_of(path)
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "not a directory (a symlink is refused: give the real path)"
        elif e.errno == errno.ENOENT:
            reason = "no such directory"
        raise UsageError(f"cannot write {path}: {directory}: {reason}") from None
    owner = os.fstat(fd).st_uid
    if owner not in trusted_owners(os.environ):
        os.close(fd)
        raise UsageError(
            f"cannot write {path}: {directory} belongs to uid {owner}, who could "
            "swap what it holds: write to a directory of root's or your own"
        )
    return fd
