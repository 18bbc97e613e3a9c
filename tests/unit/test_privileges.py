"""Why bpf() is refused, and whether pids from BPF match /proc: fakes only."""

from __future__ import annotations

import errno

import pytest

from agent.errors import PrivilegeError
from agent.kernel import privileges
from agent.kernel.privileges import (
    INIT_PID_NS_INODE,
    PidNamespace,
    explain_bpf_refusal,
    host_user_namespace,
    parse_nspid,
    parse_seccomp,
    pid_namespace_problem,
)

ALL_CAPS = "CapEff:\t000001ffffffffff\n"
NO_CAPS = "CapEff:\t0000000000000000\n"
HOST_MAP = "         0          0 4294967295\n"
USERNS_MAP = "         0     100000      65536\n"
CONTAINER_NS = 4026532178


def status(caps: str = ALL_CAPS, seccomp: int = 0, nspid: str = "4242") -> str:
    return f"Name:\tbpfprof\n{caps}NSpid:\t{nspid}\nSeccomp:\t{seccomp}\nSeccomp_filters:\t1\n"


def test_parsers() -> None:
    assert parse_seccomp(status(seccomp=2)) == 2
    assert parse_seccomp("Name:\tx\n") is None
    assert parse_nspid(status(nspid="812\t37")) == [812, 37]
    assert parse_nspid("Name:\tx\n") == []
    assert host_user_namespace(HOST_MAP) is True
    assert host_user_namespace(USERNS_MAP) is False
    assert host_user_namespace("") is None


@pytest.mark.parametrize(
    ("text", "uid_map", "err", "says"),
    [
        pytest.param(
            status(NO_CAPS, seccomp=2), HOST_MAP, errno.EPERM, "run it with sudo", id="no-caps"
        ),
        pytest.param(status(seccomp=2), USERNS_MAP, errno.EPERM, "user namespace", id="userns"),
        pytest.param(status(seccomp=2), HOST_MAP, errno.EPERM, "a seccomp filter", id="seccomp"),
        pytest.param(status(seccomp=0), HOST_MAP, errno.EPERM, "security module", id="lsm"),
        pytest.param(status(seccomp=2), "", errno.EACCES, "a seccomp filter", id="no-uid-map"),
    ],
)
def test_each_refusal_has_its_own_line(text: str, uid_map: str, err: int, says: str) -> None:
    # GIVEN what /proc/self says WHEN bpf() failed with err THEN one line names the cause
    line = explain_bpf_refusal("run", text, 0, uid_map, err)
    assert line is not None and says in line and "\n" not in line
    assert line.startswith("bpfprof run")


def test_seccomp_line_names_the_fix_not_root() -> None:
    line = explain_bpf_refusal("record", status(seccomp=2), 0, HOST_MAP, errno.EPERM) or ""
    assert "Seccomp: 2" in line and "--system-call-filter='bpf perf_event_open'" in line
    assert "sudo" not in line


def test_other_errors_are_not_refusals() -> None:
    assert explain_bpf_refusal("run", status(seccomp=2), 0, HOST_MAP, errno.EINVAL) is None


@pytest.mark.parametrize(
    ("ns", "says"),
    [
        pytest.param(PidNamespace(INIT_PID_NS_INODE, INIT_PID_NS_INODE, [4242]), None, id="host"),
        pytest.param(PidNamespace(INIT_PID_NS_INODE, None, [4242]), None, id="host-no-pid1"),
        pytest.param(
            PidNamespace(CONTAINER_NS, CONTAINER_NS, [37]), "/proc belongs", id="container"
        ),
        pytest.param(  # pid 1 not readable: one NSpid entry in a foreign namespace
            PidNamespace(CONTAINER_NS, None, [37]), "/proc belongs", id="container-no-pid1"
        ),
        pytest.param(  # unshare -p without a new /proc: /proc is the host's
            PidNamespace(CONTAINER_NS, INIT_PID_NS_INODE, [812, 1]), "its own pid", id="unshare"
        ),
        pytest.param(PidNamespace(None, None, [812, 1]), "its own pid", id="nspid-only"),
    ],
)
def test_pid_namespace_problem(ns: PidNamespace, says: str | None) -> None:
    problem = pid_namespace_problem(ns)
    if says is None:
        assert problem is None
    else:
        assert problem is not None and says in problem and "--pid=host" in problem


def test_require_privileges_raises_the_seccomp_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        privileges, "_read", lambda path: status(seccomp=2) if "status" in path else HOST_MAP
    )
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    monkeypatch.setattr(privileges.probe, "bpf_map_create_errno", lambda machine: errno.EPERM)
    with pytest.raises(PrivilegeError, match="a seccomp filter refuses bpf"):
        privileges.require_privileges("run")


def test_require_privileges_warns_of_a_container_pid_namespace(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(privileges.probe, "bpf_map_create_errno", lambda machine: 0)
    monkeypatch.setattr(
        privileges, "read_pid_namespace", lambda: PidNamespace(CONTAINER_NS, CONTAINER_NS, [37])
    )
    monkeypatch.setattr(privileges, "_read", lambda path: status())
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)
    privileges.require_privileges("run")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "not the host's" in caplog.records[0].getMessage()


def test_this_host_is_fine() -> None:
    assert pid_namespace_problem(privileges.read_pid_namespace()) is None
