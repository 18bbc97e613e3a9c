"""`bpfprof check` in containers: seccomp and PID namespace lines, from fakes."""

from __future__ import annotations

import errno

from agent.kernel.privileges import INIT_PID_NS_INODE, PidNamespace, explain_bpf_refusal
from agent.tools.check import Level, check_bpf_syscall, check_pid_namespace

HOST_MAP = "0 0 4294967295\n"


def refusal(caps: str, seccomp: int) -> str | None:
    status = f"CapEff:\t{caps}\nSeccomp:\t{seccomp}\n"
    return explain_bpf_refusal("check", status, 0, HOST_MAP, errno.EPERM)


def test_seccomp_fails_with_its_own_fix() -> None:
    r = check_bpf_syscall(errno.EPERM, "x86_64", refusal("000001ffffffffff", 2))
    assert r.level is Level.FAIL and "seccomp filter" in r.detail
    assert "perf_event_open" in r.fix and "root" not in r.fix


def test_missing_capabilities_still_say_root() -> None:
    r = check_bpf_syscall(errno.EPERM, "x86_64", refusal("0000000000000000", 2))
    assert r.level is Level.FAIL and "run as root" in r.fix


def test_pid_namespace_lines() -> None:
    host = check_pid_namespace(PidNamespace(INIT_PID_NS_INODE, INIT_PID_NS_INODE, [4242]))
    assert host.level is Level.PASS
    container = check_pid_namespace(PidNamespace(4026532178, 4026532178, [37]))
    assert container.level is Level.WARN and "not the host's" in container.detail
    assert "--pid=host" in container.fix and "hostPID" in container.fix
