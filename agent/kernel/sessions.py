"""Uprobe sessions: one BPF program at a function's entry and, only when
the entry asks for it, at its return (Linux 6.13+, BPF_TRACE_UPROBE_SESSION).

A uretprobe makes every call pay a second trap at the return; the
allocation profiler needs the return only for the few calls it samples (to
learn the address). With a session the entry program returns 0 to have its
return run, 1 to skip it, so an unsampled malloc costs one trap. BCC 0.26
and Debian's libbpf predate these links, so the link is made here with the
bpf(2) syscall (BPF_LINK_CREATE, the uprobe_multi attributes).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_SESSION = 57  # enum bpf_attach_type
SYS_BPF = {"x86_64": 321, "aarch64": 280}
ATTR_SIZE = 64  # link_create up to uprobe_multi.pid
MIN_KERNEL = (6, 13)


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a `uname -r` string; (0, 0) if it is not one."""
    parts = release.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def supported(
    release: str | None = None, machine: str | None = None, env: dict[str, str] | None = None
) -> bool:
    """Does this kernel take uprobe session links (and do we know its bpf
    syscall number)? BPFPROF_UPROBE_SESSIONS=0 in the environment says no
    (a kernel that reports 6.13 without them, or to compare the two)."""
    if (os.environ if env is None else env).get("BPFPROF_UPROBE_SESSIONS") == "0":
        return False
    release = platform.release() if release is None else release
    machine = platform.machine() if machine is None else machine
    return machine in SYS_BPF and kernel_version(release) >= MIN_KERNEL


def link_attr(
    prog_fd: int, path: bytes, offsets: list[int], pid: int, cookies: list[int] | None = None
) -> tuple[bytes, list[object]]:
    """The bpf_attr of BPF_LINK_CREATE for a uprobe session, and the buffers
    its pointers point into (keep them alive until the call returns).
    `cookies`: one per offset, what bpf_get_attach_cookie() gives there."""
    path_buf = ctypes.create_string_buffer(path)
    offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    keep: list[object] = [path_buf, offs]
    cookies_at = 0
    if cookies is not None:
        if len(cookies) != len(offsets):
            raise ValueError(f"{len(cookies)} cookies for {len(offsets)} offsets")
        values = (ctypes.c_uint64 * len(cookies))(*cookies)
        keep.append(values)
        cookies_at = ctypes.addressof(values)
    attr = struct.pack(
        "=IIII QQQQ III 4x",
        prog_fd,
        0,  # target_fd
        BPF_TRACE_UPROBE_SESSION,
        0,  # flags
        ctypes.addressof(path_buf),
        ctypes.addressof(offs),
        0,  # ref_ctr_offsets
        cookies_at,
        len(offsets),
        0,  # uprobe_multi.flags (not a return probe: the session decides)
        max(pid, 0),  # 0: every process
    )
    return attr, keep


def link(
    prog_fd: int, path: bytes, offsets: list[int], pid: int, cookies: list[int] | None = None
) -> int:
    """A uprobe session link of `prog_fd` at these file offsets of `path`
    (in process `pid`, or every process if pid <= 0), with a cookie per
    offset; the link's fd, which detaches when closed. Raises OSError."""
    attr, keep = link_attr(prog_fd, path, offsets, pid, cookies)
    buf = ctypes.create_string_buffer(attr, ATTR_SIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = int(libc.syscall(SYS_BPF[platform.machine()], BPF_LINK_CREATE, buf, ATTR_SIZE))
    del keep
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"uprobe session on {path.decode()}: {os.strerror(err)}")
    return fd
