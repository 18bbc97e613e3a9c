"""Whether this process may load BPF programs, and whether its pids mean anything.

The capabilities decide first: root normally holds them all, but not in a
container or under a service that dropped them, and then the kernel refuses
BPF just the same; euid counts only when the capabilities are unknown.

Holding them is not enough in a container: a seccomp filter (Docker's and
systemd-nspawn's default ones, a unit's SystemCallFilter=) answers bpf() with
EPERM before the kernel looks at capabilities, and capabilities held in a user
namespace other than the host's do not count for BPF. Each gets its own line
with its own fix instead of "run as root", which the user already does.

BPF reports pids as the host's PID namespace numbers them. An agent whose
/proc belongs to another PID namespace (a container's) looks those pids up
in the wrong table: every user frame stays unnamed. That is a warning at
start, not an error: the counts are still right.

`record`, `run` and `check` all ask here.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import PrivilegeError
from agent.kernel import probe

log = logging.getLogger("bpfprof.privileges")

# The inode number of the host's (initial) PID namespace: fixed in the kernel
# (PROC_PID_INIT_INO, include/linux/proc_ns.h) since 3.8.
INIT_PID_NS_INODE = 0xEFFFFFFC
FULL_UID_MAP = ("0", "0", "4294967295")

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
CAP_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}


def parse_cap_eff(status_text: str) -> int | None:
    """The effective capability mask from /proc/PID/status, None if missing."""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status_text, re.MULTILINE)
    return int(m[1], 16) if m else None


def has_bpf_privilege(cap_eff: int) -> bool:
    """CAP_BPF with CAP_PERFMON since 5.8, or CAP_SYS_ADMIN which covers both."""
    held = {cap for cap in CAP_NAMES if cap_eff >> cap & 1}
    return CAP_SYS_ADMIN in held or {CAP_BPF, CAP_PERFMON} <= held


def has_bpf_privileges(status_text: str, euid: int) -> bool:
    """From the status text: the capabilities if listed, else euid 0."""
    cap_eff = parse_cap_eff(status_text)
    return euid == 0 if cap_eff is None else has_bpf_privilege(cap_eff)


def parse_seccomp(status_text: str) -> int | None:
    """The seccomp mode from /proc/PID/status: 0 none, 1 strict, 2 filter."""
    m = re.search(r"^Seccomp:\s*(\d+)$", status_text, re.MULTILINE)
    return int(m[1]) if m else None


def parse_nspid(status_text: str) -> list[int]:
    """NSpid: this task's pid in each PID namespace from /proc's down to its own."""
    m = re.search(r"^NSpid:\s*([\d\s]+?)\s*$", status_text, re.MULTILINE)
    return [int(x) for x in m[1].split()] if m else []


def host_user_namespace(uid_map: str) -> bool | None:
    """Whether /proc/self/uid_map is the host's identity map (None: unreadable)."""
    lines = uid_map.split("\n")
    rows = [tuple(ln.split()) for ln in lines if ln.strip()]
    return None if not rows else rows == [FULL_UID_MAP]


def explain_bpf_refusal(
    command: str, status_text: str, euid: int, uid_map: str, err: int
) -> str | None:
    """The one line saying why bpf() failed with `err`, or None if it did not.

    EPERM with the capabilities held comes from above the capability checks:
    a user namespace, a seccomp filter, or a security module, in that order
    of likelihood in containers.
    """
    if err not in (errno.EPERM, errno.EACCES):
        return None
    who = f"bpfprof {command}"
    if not has_bpf_privileges(status_text, euid):
        return (
            f"{who} needs root (or CAP_BPF and CAP_PERFMON), and this process "
            "has neither: run it with sudo"
        )
    if host_user_namespace(uid_map) is False:
        return (
            f"{who}: the kernel refuses bpf() because this process runs in a user namespace "
            "(its root and capabilities count only inside it): run it in the host's user "
            "namespace (no --userns/-U/--private-users, PrivateUsers=no)"
        )
    if parse_seccomp(status_text) == 2:
        return (
            f"{who}: a seccomp filter refuses bpf() (Seccomp: 2 in /proc/self/status; "
            "the capabilities are there): allow the bpf and perf_event_open syscalls "
            "(systemd-nspawn --system-call-filter='bpf perf_event_open', docker "
            "--security-opt seccomp=<profile allowing them>, a unit's SystemCallFilter=)"
        )
    return (
        f"{who}: the kernel refuses bpf() ({os.strerror(err)}) although this process holds "
        "CAP_BPF and CAP_PERFMON and no seccomp filter: a security module (lockdown, SELinux, "
        "AppArmor) denies it; see `dmesg`"
    )


def bpf_refusal(command: str, err: int) -> str | None:
    """explain_bpf_refusal for this process."""
    return explain_bpf_refusal(
        command,
        _read("/proc/self/status"),
        os.geteuid(),
        _read("/proc/self/uid_map"),
        err,
    )


@dataclass(frozen=True)
class PidNamespace:
    """What this process can tell of the PID namespaces it and its /proc are in."""

    own_inode: int | None  # /proc/self/ns/pid
    proc_inode: int | None  # /proc/1/ns/pid: the namespace /proc numbers pids in
    # (None when unreadable: pid 1 may hold capabilities this process lacks)
    nspid: list[int]  # NSpid from /proc/self/status


def pid_namespace_problem(ns: PidNamespace) -> str | None:
    """One line saying why pids from BPF will not match /proc, or None.

    BPF's helpers give pids in the host's namespace. If /proc is a
    container's, those pids are missing from it or name other processes:
    every user frame stays an address. If only this process is in a child
    namespace (unshare -p without a new /proc), /proc still matches BPF, but
    this process's own pid does not.
    """
    fix = (
        "run bpfprof in the host's PID namespace (docker/podman --pid=host, "
        "Kubernetes hostPID: true, no PrivatePIDs= in its unit)"
    )
    own_foreign = ns.own_inode is not None and ns.own_inode != INIT_PID_NS_INODE
    if ns.proc_inode is None:  # /proc/1 not ours to look at: NSpid tells from the task's side
        proc_foreign = own_foreign and len(ns.nspid) == 1  # /proc numbers pids as we do
    else:
        proc_foreign = ns.proc_inode != INIT_PID_NS_INODE
    if proc_foreign:
        where = ns.proc_inode or ns.own_inode
        return (
            f"/proc belongs to a PID namespace that is not the host's (pid:[{where}]): "
            "BPF reports host pids, which this /proc does not show, so user frames "
            f"will stay unnamed; {fix}"
        )
    if own_foreign or len(ns.nspid) > 1:
        pids = " ".join(map(str, ns.nspid)) or "?"
        return (
            f"bpfprof runs in a PID namespace that is not the host's (NSpid {pids}): "
            f"its own pid differs from the one BPF reports; {fix}"
        )
    return None


def read_pid_namespace(proc: str = "/proc") -> PidNamespace:
    return PidNamespace(
        own_inode=_inode(f"{proc}/self/ns/pid"),
        proc_inode=_inode(f"{proc}/1/ns/pid"),
        nspid=parse_nspid(_read(f"{proc}/self/status")),
    )


def warn_pid_namespace() -> str | None:
    """Log the PID namespace problem once at start, if there is one; return it."""
    problem = pid_namespace_problem(read_pid_namespace())
    if problem:
        log.warning("%s", problem)
    return problem


def require_privileges(command: str) -> None:
    """Raise PrivilegeError, naming `command`, unless BPF programs can be loaded.

    Also warns (once) when the PID namespace will leave profiles unnamed: the
    two commands that profile both start here.
    """
    status = _read("/proc/self/status")
    if not has_bpf_privileges(status, os.geteuid()):
        raise PrivilegeError(
            f"bpfprof {command} needs root (or CAP_BPF and CAP_PERFMON), and this process "
            "has neither: run it with sudo"
        )
    err = probe.bpf_map_create_errno(platform.machine())
    why = bpf_refusal(command, err) if err else None
    if why:
        raise PrivilegeError(why)
    warn_pid_namespace()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:  # no such process, or not ours to look at (hidepid)
        return None
