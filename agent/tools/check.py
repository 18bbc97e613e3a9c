"""`bpfprof check`: can this host run bpfprof, and if not, what to do about it.

Every check is split in two: a reader of a few lines that touches /proc, /sys
or a syscall, and a pure function that turns what was read into a
`CheckResult`. Unit tests feed the pure functions inline text and numbers;
`run_checks()` wires the readers to them. Nothing here needs BCC to compile
anything, so the report also works on the hosts where that is what fails.
"""

from __future__ import annotations

import enum
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.kernel.privileges import (
    CAP_NAMES,
    PidNamespace,
    bpf_refusal,
    has_bpf_privilege,
    parse_cap_eff,
    pid_namespace_problem,
    read_pid_namespace,
)
from agent.kernel.probe import bcc_status, bpf_map_create_errno

# The BPF ring buffer (BPF_RINGBUF_OUTPUT in bpf/cpu.bpf.c) arrived in 5.8.
MIN_KERNEL = (5, 8)


TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
HEADERS_FIX = "run `make setup` (or apt-get install linux-headers-$(uname -r))"


class Level(enum.Enum):
    """How a result reads: INFO and WARN are still ok, only FAIL is not."""

    PASS = "PASS"
    INFO = "INFO"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report; `fix` says what to run when it is not a PASS."""

    name: str
    level: Level
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level is not Level.FAIL


# --- kernel ------------------------------------------------------------------


def check_kernel(release: str, machine: str) -> CheckResult:
    """Only the version matters: every BPF feature bpfprof uses has one."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        return CheckResult("kernel", Level.WARN, f"{release} ({machine}): cannot parse the version")
    version = (int(m[1]), int(m[2]))
    if version < MIN_KERNEL:
        need = ".".join(map(str, MIN_KERNEL))
        return CheckResult(
            "kernel",
            Level.FAIL,
            f"{release} ({machine}): bpfprof needs {need} or newer (BPF ring buffer)",
            f"boot a kernel {need} or newer",
        )
    return CheckResult("kernel", Level.PASS, f"{release} ({machine})")


# --- BPF syscall -------------------------------------------------------------


def check_bpf_syscall(err: int | None, machine: str, refusal: str | None = None) -> CheckResult:
    """`refusal`: privileges.explain_bpf_refusal's line, which tells a seccomp
    filter, a user namespace or a security module from missing capabilities."""
    name = "bpf syscall"
    if err is None:
        return CheckResult(name, Level.WARN, f"not tried: syscall number unknown on {machine}")
    if err == 0:
        return CheckResult(name, Level.PASS, "BPF_MAP_CREATE works")
    if err in (1, 13) and refusal and "sudo" not in refusal:
        why, _, fix = refusal.partition(": ")[2].rpartition(": ")
        return CheckResult(name, Level.FAIL, f"BPF_MAP_CREATE refused: {why}", fix)
    if err in (1, 13):  # EPERM, EACCES
        return CheckResult(
            name,
            Level.FAIL,
            f"BPF_MAP_CREATE refused ({os.strerror(err)}): not privileged",
            "run as root, or with CAP_BPF and CAP_PERFMON",
        )
    if err == 38:  # ENOSYS
        return CheckResult(
            name,
            Level.FAIL,
            "the kernel has no bpf() syscall",
            "boot a kernel built with CONFIG_BPF_SYSCALL=y",
        )
    return CheckResult(
        name, Level.FAIL, f"BPF_MAP_CREATE failed: {os.strerror(err)}", "see `dmesg` for the reason"
    )


# --- PID namespace -----------------------------------------------------------


def check_pid_namespace(ns: PidNamespace) -> CheckResult:
    """BPF gives host pids: a container's /proc cannot name their frames."""
    problem = pid_namespace_problem(ns)
    if problem is None:
        return CheckResult("pid namespace", Level.PASS, "the host's: BPF's pids match /proc")
    what, _, fix = problem.rpartition("; ")
    return CheckResult("pid namespace", Level.WARN, what, fix)


# --- BTF ---------------------------------------------------------------------


def check_btf(present: bool) -> CheckResult:
    """BTF is not needed by BCC's C programs, only by CO-RE tools: a WARN at most."""
    if present:
        return CheckResult("btf", Level.PASS, "/sys/kernel/btf/vmlinux present")
    return CheckResult(
        "btf",
        Level.WARN,
        "no /sys/kernel/btf/vmlinux: bpfprof works without it, CO-RE tools do not",
        "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )


# --- kernel headers ----------------------------------------------------------


def parse_utsrelease(text: str) -> str | None:
    """The release in a headers tree's include/generated/utsrelease.h."""
    m = re.search(r'^#define UTS_RELEASE "([^"]+)"', text, re.MULTILINE)
    return m[1] if m else None


def headers_version(build_dir: str, utsrelease_text: str | None) -> str | None:
    """What kernel a headers tree is for: utsrelease.h, else the directory name."""
    if utsrelease_text is not None and (version := parse_utsrelease(utsrelease_text)):
        return version
    m = re.fullmatch(r"linux-headers-(.+)", Path(build_dir).name)
    return m[1] if m else None


def check_headers(release: str, build_dir: str | None, utsrelease_text: str | None) -> CheckResult:
    """BCC refuses to compile without headers; other headers are an acceptable fallback.

    Mismatched headers describe another kernel's struct layouts. bpfprof's
    programs read no kernel struct through them (helpers and tracepoint
    formats only), so they compile and measure correctly, but say so.
    """
    if build_dir is None:
        return CheckResult(
            "headers", Level.FAIL, f"no kernel headers at /lib/modules/{release}/build", HEADERS_FIX
        )
    version = headers_version(build_dir, utsrelease_text)
    if version == release:
        return CheckResult("headers", Level.PASS, f"{build_dir} (matches {release})")
    what = f"is for {version}" if version else "is of unknown version"
    return CheckResult(
        "headers",
        Level.WARN,
        f"{build_dir} {what}, not {release}: a fallback that works, since bpfprof reads "
        "no kernel struct through it",
        f"apt-get install linux-headers-{release}, where the distro has it",
    )


def find_headers(release: str, modules_root: str = "/lib/modules") -> tuple[str | None, str | None]:
    """(resolved build directory, text of its utsrelease.h), each None when absent."""
    build = Path(modules_root, release, "build")
    if not os.path.isdir(build / "include"):
        return None, None
    resolved = build.resolve()
    try:
        text = (resolved / "include/generated/utsrelease.h").read_text()
    except OSError:
        text = None
    return str(resolved), text


# --- BCC ---------------------------------------------------------------------


def check_bcc(
    version: str | None, error: str | None, executable: str, base_prefix: str
) -> CheckResult:
    """BCC comes from the distro for the distro's Python only, hence the two fixes."""
    if error is None:
        return CheckResult("bcc", Level.PASS, f"bcc {version} importable from {executable}")
    if base_prefix != "/usr":
        fix = (
            "python3-bpfcc serves only Debian's /usr/bin/python3: run bpfprof from a venv made "
            "with `/usr/bin/python3 -m venv --system-site-packages` (make setup makes .venv)"
        )
    else:
        fix = (
            "apt-get install python3-bpfcc, and use a venv made with --system-site-packages "
            "(make setup does both)"
        )
    return CheckResult("bcc", Level.FAIL, f"{executable} cannot import bcc: {error}", fix)


# --- tracefs -----------------------------------------------------------------


def parse_mounts(text: str) -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mounts (octal escapes undone)."""
    mounts = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            mounts[point] = fields[2]
    return mounts


def check_tracefs(mounts_text: str) -> CheckResult:
    """Tracepoints (offcpu, lock) need tracefs: BCC reads event ids and formats there."""
    mounts = parse_mounts(mounts_text)
    found = [d for d in TRACEFS_DIRS if mounts.get(d) == "tracefs"]
    if found:
        return CheckResult("tracefs", Level.PASS, f"mounted at {', '.join(found)}")
    return CheckResult(
        "tracefs",
        Level.FAIL,
        "not mounted: tracepoints cannot be attached",
        "mount -t tracefs tracefs /sys/kernel/tracing (make setup does this)",
    )


# --- perf_event_paranoid -----------------------------------------------------

PARANOID_MEANING = {
    -1: "no restrictions for anyone",
    0: "unprivileged users may not read raw tracepoint data",
    1: "unprivileged users may not use CPU-wide events",
    2: "unprivileged users may not profile the kernel",
}


def check_perf_paranoid(value: int | None, privileged: bool) -> CheckResult:
    """The sysctl limits unprivileged users only; root and CAP_PERFMON ignore it."""
    name = "perf_event_paranoid"
    if value is None:
        return CheckResult(
            name,
            Level.FAIL,
            "no kernel.perf_event_paranoid: the kernel has no perf events, so no CPU sampling",
            "boot a kernel built with CONFIG_PERF_EVENTS=y",
        )
    meaning = PARANOID_MEANING.get(
        max(value, -1), "unprivileged users may not use perf events at all"
    )
    if privileged:
        return CheckResult(name, Level.PASS, f"{value}: {meaning}; no limit for root/CAP_PERFMON")
    return CheckResult(
        name,
        Level.WARN,
        f"{value}: {meaning}, and this process is not privileged",
        "run as root (see the capabilities line)",
    )


# --- capabilities ------------------------------------------------------------


def check_capabilities(cap_eff: int, euid: int) -> CheckResult:
    """Capabilities decide, not the uid: root in a container may lack them."""
    held = [n for cap, n in sorted(CAP_NAMES.items()) if cap_eff >> cap & 1]
    who = "root" if euid == 0 else f"euid {euid}"
    detail = f"{who}, holding {', '.join(held) or 'none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN'}"
    if not has_bpf_privilege(cap_eff):
        fix = (
            "give the container CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (or --privileged)"
            if euid == 0
            else "run as root: sudo bpfprof ..."
        )
        return CheckResult("capabilities", Level.FAIL, f"{detail}: cannot load BPF programs", fix)
    if euid != 0:
        return CheckResult(
            "capabilities",
            Level.WARN,
            f"{detail}: BPF loads, but tracefs and other users' /proc/PID/maps may be unreadable",
            "run as root, the tested set-up",
        )
    return CheckResult("capabilities", Level.PASS, detail)


# --- kprobes -----------------------------------------------------------------


def check_kprobes(available: bool) -> CheckResult:
    """Informational: many BPF tools assume kprobes, bpfprof deliberately does not."""
    if available:
        return CheckResult("kprobes", Level.INFO, "available (bpfprof does not use them)")
    return CheckResult(
        "kprobes",
        Level.INFO,
        "not available (CONFIG_KPROBES off?): fine, bpfprof uses perf events, tracepoints "
        "and uprobes only",
    )


def kprobes_available() -> bool:
    """The kprobe perf PMU, or a kprobe_events file in a mounted tracefs."""
    paths = ["/sys/bus/event_source/devices/kprobe"] + [f"{d}/kprobe_events" for d in TRACEFS_DIRS]
    return any(os.path.exists(p) for p in paths)  # False, not an error, when unreadable


# --- running and reporting ---------------------------------------------------


def read_text(path: str) -> str:
    """The file's text, or "" when it cannot be read (the parser then reports it)."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def run_checks() -> list[CheckResult]:
    """Every check against this host, in the order a reader fixes them."""
    release, machine = platform.release(), platform.machine()
    cap_eff = parse_cap_eff(read_text("/proc/self/status")) or 0
    build_dir, utsrelease = find_headers(release)
    bcc_version, bcc_error = bcc_status()
    bpf_err = bpf_map_create_errno(machine)
    results = [
        check_kernel(release, machine),
        check_capabilities(cap_eff, os.geteuid()),
        check_bpf_syscall(bpf_err, machine, bpf_refusal("check", bpf_err) if bpf_err else None),
        check_btf(os.path.exists("/sys/kernel/btf/vmlinux")),
        check_headers(release, build_dir, utsrelease),
        check_bcc(bcc_version, bcc_error, sys.executable, sys.base_prefix),
        check_tracefs(read_text("/proc/self/mounts")),
        check_perf_paranoid(
            read_int("/proc/sys/kernel/perf_event_paranoid"), has_bpf_privilege(cap_eff)
        ),
        check_kprobes(kprobes_available()),
    ]
    pid_ns = check_pid_namespace(read_pid_namespace())
    if pid_ns.level is not Level.PASS:  # a line only where it matters: in containers
        results.insert(3, pid_ns)
    return results


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_report(results: list[CheckResult]) -> str:
    """One aligned line per check, a `fix:` line under each that is not a PASS, a summary."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{r.level.value}  {r.name:<{width}}  {r.detail}")
        if r.fix and r.level in (Level.WARN, Level.FAIL):
            lines.append(f"{'':4}  {'':<{width}}  fix: {r.fix}")
    failed = sum(r.level is Level.FAIL for r in results)
    warned = sum(r.level is Level.WARN for r in results)
    verdict = "fix the FAIL lines first" if failed else "bpfprof can run here"
    lines.append(
        f"{plural(len(results), 'check')}, {failed} failed, {plural(warned, 'warning')}: {verdict}"
    )
    return "\n".join(lines) + "\n"
