"""Uprobe session links: the kernel check and the bpf_attr layout."""

from __future__ import annotations

import ctypes
import struct

import pytest

from agent.config import SourceOptions
from agent.kernel import sessions
from agent.sources.alloc import SESSIONS, alloc_cflags, use_sessions
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
    # every role with a return probe has a session program
    assert {role for role, (_, ret, _) in ROLES.items() if ret} == set(SESSIONS)
