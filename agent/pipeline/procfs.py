"""Facts about processes from /proc, beyond what the symbolizer keeps.

Readers are three lines that touch /proc and take its root (so tests and
containers can point elsewhere); parsers take the text.
"""

from __future__ import annotations

import re

# A container runtime names the cgroup of a container after its 64-hex id:
# /docker/<id> (cgroup v1), docker-<id>.scope, cri-containerd-<id>.scope,
# crio-<id>.scope, libpod-<id>.scope (systemd cgroup driver).
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")


def parse_container_id(cgroup_text: str) -> str:
    """The container id in a /proc/PID/cgroup text, or "" for none."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            m = _CONTAINER.search(part)
            if m:
                return m.group(1)
    return ""


def read_cgroup(pid: int, proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/{pid}/cgroup") as f:
            return f.read()
    except OSError:  # the process is gone, or not ours to read
        return ""


class ContainerIds:
    """Remembers each process's container id from when it was first seen,
    so a process that exits before the profile is built keeps its label."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._proc_root = proc_root
        self._ids: dict[int, str] = {}

    def observe(self, pid: int) -> None:
        self._ids[pid] = parse_container_id(read_cgroup(pid, self._proc_root))

    def get(self, pid: int) -> str:
        if pid not in self._ids:
            self.observe(pid)
        return self._ids[pid]
