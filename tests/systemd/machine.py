"""A Debian 12 container booted by systemd-nspawn, with systemd as PID 1.

The root is built once with debootstrap and kept under CACHE (rebuilt only
when missing); each boot overlays it with a tmpfs (--volatile=overlay), so
the cache stays as debootstrap left it. Commands run in the container through
nsenter into all the namespaces of its PID 1, found as the nspawn process's
child. The source to install is a `git clone` of this checkout, bound in at
/src, with a wheelhouse the host builds (the container has no PyPI
credentials of its own: the host's pip configuration is not copied in).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE = Path("/var/cache/bpfprof-tests")
ROOT = CACHE / "systemd-bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,python3-bpfcc,ca-certificates,procps"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSPAWN_FLAGS = [
    "-b",
    "--register=no",
    "--keep-unit",
    "--volatile=overlay",
    "--console=passive",
    "--capability=CAP_BPF,CAP_PERFMON,CAP_SYSLOG",
    "--system-call-filter=bpf perf_event_open",
    "--bind-ro=/lib/modules",
    "--bind-ro=/usr/src",
    "--bind=/sys/kernel/tracing",
]


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The host's Debian mirror: the first URI serving bookworm in its apt sources."""
    for f in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in f.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            if uris and re.search(r"^Suites:.*\bbookworm\b", stanza, re.MULTILINE):
                return uris[1]
    listing = sources / "sources.list"
    if listing.exists():
        m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", listing.read_text(), re.M)
        if m:
            return m[1]
    return "http://deb.debian.org/debian"


def ensure_tools() -> None:
    if shutil.which("debootstrap") and shutil.which("systemd-nspawn"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "debootstrap", "systemd-container"],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def ensure_root() -> Path:
    """The cached Debian root, built now if missing (about 2-3 minutes)."""
    if (ROOT / "usr/lib/systemd/systemd").exists():
        return ROOT
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    CACHE.chmod(0o700)  # private: a root file system others must not edit
    partial = CACHE / "systemd-bookworm.partial"
    shutil.rmtree(partial, ignore_errors=True)
    argv = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm"]
    subprocess.run([*argv, str(partial), debian_mirror()], check=True, stdout=subprocess.DEVNULL)
    partial.rename(ROOT)
    return ROOT


def ensure_tracefs() -> None:
    if not Path("/sys/kernel/tracing/events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=True)


def clone_and_wheels(repo: Path, work: Path, pip: Path) -> tuple[Path, Path]:
    """A clean clone of the checkout's HEAD and the wheels it installs from."""
    src, wheels = work / "src", work / "wheels"
    subprocess.run(["git", "clone", "-q", str(repo), str(src)], check=True)
    subprocess.run(
        [str(pip), "wheel", "-q", "--wheel-dir", str(wheels), str(src)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return src, wheels


class Machine:
    """The booted container: `run` a shell command in it, `stop` it."""

    def __init__(self, root: Path, binds: dict[Path, str], log: Path) -> None:
        argv = ["systemd-nspawn", "-D", str(root), "-M", "bpfprof-test", *NSPAWN_FLAGS]
        argv += [f"--bind={host}:{inside}" for host, inside in binds.items()]
        self.log = log
        with open(log, "w") as out:
            self.nspawn = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        try:
            self.pid = self._init_pid()
            self._wait_booted()
        except BaseException:  # no fixture will stop a machine that never was
            self.stop()
            raise

    def _wait_booted(self, timeout: float = 120) -> None:
        """Until systemd says the boot is over (its bus is not up at first)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run("systemctl is-system-running --wait", timeout=timeout)
            if state.stdout.strip() in ("running", "degraded"):
                return
            assert time.monotonic() < deadline, state.stdout + state.stderr + self.boot_log()
            time.sleep(0.5)

    def _init_pid(self, timeout: float = 30) -> int:
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.nspawn.poll() is None, self.boot_log()
            pids = children.read_text().split() if children.exists() else []
            for pid in pids:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.1)
        raise AssertionError(f"no systemd in the container after {timeout} s\n{self.boot_log()}")

    def boot_log(self) -> str:
        return self.log.read_text(errors="replace")

    def run(
        self, command: str, check: bool = False, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`command` under sh in every namespace of the container's PID 1."""
        argv = ["nsenter", "-t", str(self.pid), "-a", "env", "-i", f"PATH={PATH}"]
        proc = subprocess.run(
            [*argv, "sh", "-c", command], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert proc.returncode == 0, f"{command}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    def path(self, inside: str) -> Path:
        """A path in the container's file system, as the host reaches it."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def stop(self) -> None:
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn powers the container off
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
