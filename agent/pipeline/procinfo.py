"""What the agent knows of each process: names, command line, cgroup, service.

Read once when a process is first seen (it may be gone by the time its
samples are exported) and used for two things: the OTLP resource attributes
of its profiles and the include/exclude filters. Readers are small
functions taking the /proc root; parsers take text, so tests feed them
inline input.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from agent.config import parse_key_values

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


ENVIRON_LIMIT = 1 << 20  # a process's environment is bounded by ARG_MAX; read no more


@dataclass(frozen=True)
class ProcessFacts:
    pid: int
    exe_path: str = ""
    exe_name: str = ""
    command_line: str = ""
    cgroup: str = ""
    container_id: str = ""
    service_name: str = ""  # from the process's own OTEL_SERVICE_NAME / attributes
    attributes: tuple[tuple[str, str], ...] = field(default=())  # its OTEL_RESOURCE_ATTRIBUTES


def parse_environ(data: bytes) -> dict[str, str]:
    """NUL-separated NAME=value pairs (undecodable bytes replaced)."""
    out = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            out[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def otel_identity(environ: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """service.name and the resource attributes a process declares for itself,
    as the OpenTelemetry SDK in it would: OTEL_SERVICE_NAME wins over a
    service.name inside OTEL_RESOURCE_ATTRIBUTES. A malformed value is ignored
    (it is the profiled program's problem, not the agent's)."""
    try:
        attrs = parse_key_values(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    except ValueError:
        attrs = {}
    service = environ.get("OTEL_SERVICE_NAME", "") or attrs.pop("service.name", "")
    attrs.pop("service.name", None)
    return service, tuple(sorted(attrs.items()))


def parse_cmdline(data: bytes) -> str:
    return " ".join(a.decode("utf-8", "replace") for a in data.rstrip(b"\0").split(b"\0") if a)


def parse_cgroup_path(text: str) -> str:
    """The cgroup v2 path ("0::/system.slice/x.service"), else the first v1 one."""
    paths = [line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2]
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return paths[0] if paths else ""


def _read(path: str, limit: int = ENVIRON_LIMIT) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:  # gone, a kernel thread, or not ours to read
        return b""


def read_facts(pid: int, proc_root: str = "/proc") -> ProcessFacts:
    base = f"{proc_root}/{pid}"
    try:
        exe = os.readlink(f"{base}/exe")
    except OSError:
        exe = ""
    exe = exe.removesuffix(" (deleted)")
    name = os.path.basename(exe) or _read(f"{base}/comm").decode("utf-8", "replace").strip()
    cgroup_text = _read(f"{base}/cgroup").decode("utf-8", "replace")
    service, attrs = otel_identity(parse_environ(_read(f"{base}/environ")))
    return ProcessFacts(
        pid=pid,
        exe_path=exe,
        exe_name=name,
        command_line=parse_cmdline(_read(f"{base}/cmdline")),
        cgroup=parse_cgroup_path(cgroup_text),
        container_id=parse_container_id(cgroup_text),
        service_name=service,
        attributes=attrs,
    )


class ProcessTable:
    """Facts per pid, read at first sight; `prune` drops pids that are gone."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._facts: dict[int, ProcessFacts] = {}

    def observe(self, pid: int) -> ProcessFacts:
        facts = read_facts(pid, self.proc_root)
        self._facts[pid] = facts
        return facts

    def get(self, pid: int) -> ProcessFacts:
        return self._facts.get(pid) or self.observe(pid)

    def __len__(self) -> int:
        return len(self._facts)

    def forget(self, pid: int) -> None:
        self._facts.pop(pid, None)

    def prune(self, keep: set[int]) -> list[int]:
        """Forget pids that no longer exist and are not in `keep`; returns them."""
        gone = [
            p for p in self._facts if p not in keep and not os.path.exists(f"{self.proc_root}/{p}")
        ]
        for p in gone:
            del self._facts[p]
        return gone


def process_resource(
    facts: ProcessFacts,
    host_name: str,
    extra: tuple[tuple[str, str], ...] = (),
    default_service: str = "",
    command_line: bool = False,
) -> tuple[tuple[str, str | int], ...]:
    """OTLP resource attributes of one process (semantic conventions).

    Precedence: the agent's own OTEL_RESOURCE_ATTRIBUTES (`extra`, e.g. the
    deployment environment) < what the process declares for itself < what
    the agent measured (pid, executable, container). service.name is the
    process's own, else the agent's configured default, else the executable
    name, so services that already set it are named right.
    """
    attrs: dict[str, str | int] = dict(extra)
    attrs.update(facts.attributes)
    attrs["host.name"] = host_name
    attrs["service.name"] = facts.service_name or default_service or facts.exe_name
    attrs["process.pid"] = facts.pid
    attrs["process.executable.name"] = facts.exe_name
    if facts.exe_path:
        attrs["process.executable.path"] = facts.exe_path
    if command_line and facts.command_line:
        attrs["process.command_line"] = facts.command_line
    if facts.container_id:
        attrs["container.id"] = facts.container_id
    return tuple(sorted(attrs.items()))
