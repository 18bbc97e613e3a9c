"""Uprobe session links: the kernel check and the bpf_attr layout."""

from __future__ import annotations

import ctypes
import re
import struct
from pathlib import Path

import pytest

from agent.config import SourceOptions
from agent.kernel import sessions
from agent.sources.alloc import SESSION_ROLES, alloc_cflags, use_sessions
from agent.sources.allocators import ROLES


def test_kernel_version_of_uname_strings() -> None:
    assert sessions.kernel_version("6.18.0-custom") == (6, 18)
    assert sessions.kernel_version("6.1.0-27-amd64") == (6, 1)
    assert sessions.kernel_version("garbage") == (0, 0)


def test_sessions_need_6_13_a_known_syscall_and_no_opt_out() -> None:
    assert sessions.supported("6.13.0", "x86_64", env={})
    assert not sessions.supported("6.12.9", "x86_64", env={})
    assert not sessions.supported("6.18.0", "riscv64", env={})
    assert not sessions.supported("6.18.0", "x86_64", env={"BPFPROF_UPROBE_SESSIONS": "0"})


def test_link_attr_is_link_create_with_uprobe_multi_fields() -> None:
    attr, keep = sessions.link_attr(7, b"/lib/libc.so.6", [0x98930], 1234)
    assert len(attr) == 64
    prog, target, attach, flags = struct.unpack_from("=IIII", attr, 0)
    assert (prog, target, attach, flags) == (7, 0, 57, 0)
    path, offsets, refs, cookies = struct.unpack_from("=QQQQ", attr, 16)
    count, multi_flags, pid = struct.unpack_from("=III", attr, 48)
    assert (refs, cookies, count, multi_flags, pid) == (0, 0, 1, 0, 1234)
    assert ctypes.string_at(path) == b"/lib/libc.so.6"
    assert ctypes.c_uint64.from_address(offsets).value == 0x98930
    assert len(keep) == 2
    # every process: pid 0
    assert struct.unpack_from("=I", sessions.link_attr(7, b"/x", [1], -1)[0], 56) == (0,)


def test_a_bad_program_fd_is_an_os_error() -> None:
    with pytest.raises(OSError, match="uprobe session on /nonexistent"):
        sessions.link(1 << 30, b"/nonexistent", [0], 0)  # no such fd


def test_sessions_replace_the_return_probes_only_for_the_live_heap() -> None:
    assert use_sessions(SourceOptions(), True)
    assert not use_sessions(SourceOptions(alloc_inuse=False), True)
    assert not use_sessions(SourceOptions(), False)
    assert "-DUPROBE_SESSION=1" in alloc_cflags(SourceOptions(), False, True)
    assert "-DUPROBE_SESSION=1" not in alloc_cflags(SourceOptions(), False, False)
    # every role with a return probe has a session cookie
    assert {role for role, (_, ret, _) in ROLES.items() if ret} == set(SESSION_ROLES)


def test_session_cookies_are_the_programs_roles() -> None:
    """The cookie each link carries is the ROLE_* the program dispatches on."""
    text = (Path(__file__).parents[2] / "bpf" / "alloc.bpf.c").read_text()
    defined = {m[0].lower(): int(m[1]) for m in re.findall(r"#define ROLE_(\w+) (\d+)", text)}
    assert defined == SESSION_ROLES


def test_link_attr_carries_one_cookie_per_offset() -> None:
    attr, keep = sessions.link_attr(7, b"/x", [0x10, 0x20], 0, [3, 4])
    (cookies,) = struct.unpack_from("=Q", attr, 40)
    assert (ctypes.c_uint64 * 2).from_address(cookies)[:] == [3, 4]
    assert len(keep) == 3
    with pytest.raises(ValueError, match="1 cookies for 2 offsets"):
        sessions.link_attr(7, b"/x", [0x10, 0x20], 0, [3])
