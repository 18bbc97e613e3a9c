"""Whether this process may load BPF programs: the capabilities decide.

Root normally holds them all, but not in a container or under a service that
dropped them, and then the kernel refuses BPF just the same; euid counts only
when the capabilities are unknown. `record`, `run` and `check` all ask here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.errors import PrivilegeError

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


def require_privileges(command: str) -> None:
    """Raise PrivilegeError, naming `command`, unless BPF programs can be loaded."""
    status = Path("/proc/self/status").read_text()
    if not has_bpf_privileges(status, os.geteuid()):
        raise PrivilegeError(
            f"bpfprof {command} needs root (or CAP_BPF and CAP_PERFMON), and this process "
            "has neither: run it with sudo"
        )
