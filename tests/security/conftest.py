"""Attacks on a root agent, made by a real unprivileged user.

Every test here plays a hostile local user: an account made for the test
(`bpfprof-hostile`), whose processes are started through setpriv with
every capability dropped and no_new_privs set, in a directory it owns.
What the agent (real `bpfprof run` / `record`, as root) must show:

- no byte of a root-only file (`root_secret`) in anything it writes;
- alive and reporting (its status file's interval count keeps rising);
- bounded memory (RSS under AGENT_RSS_LIMIT);
- SIGTERM honoured within 5 s.
"""

from __future__ import annotations

import gzip
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import is_root

USER = "bpfprof-hostile"
AGENT_RSS_LIMIT = 300 << 20
SIGTERM_WITHIN_S = 5.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root() and shutil.which("setpriv") and shutil.which("useradd"):
        return
    skip = pytest.mark.skip(reason="needs root, setpriv and useradd to play a local user")
    for item in items:
        if "/security/" in str(item.fspath):
            item.add_marker(skip)


@dataclass
class Hostile:
    """An unprivileged local user and a directory of its own."""

    uid: int
    gid: int
    home: Path

    def argv(self, cmd: list[str]) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            *cmd,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8", **extra}

    def run(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", self.home)
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, **kw)

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[str]:
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", self.home)
        return subprocess.Popen(self.argv(cmd), text=True, **kw)

    def compile(self, source: str, name: str, *flags: str) -> Path:
        """Build a C program (as root) into the user's directory, readable by it."""
        src = self.home / f"{name}.c"
        src.write_text(source)
        out = self.home / name
        subprocess.run(["gcc", *flags, "-o", str(out), str(src)], check=True)
        os.chown(out, self.uid, self.gid)
        return out

    def give(self, path: Path) -> Path:
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        return path


@pytest.fixture(scope="session")
def hostile_account() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def hostile(hostile_account: tuple[int, int]) -> Iterator[Hostile]:
    """The user, with a fresh directory of its own under /tmp (the pytest
    tmp_path of root is 0700, out of the user's reach)."""
    uid, gid = hostile_account
    home = Path(tempfile.mkdtemp(prefix="bpfprof-hostile-", dir="/tmp"))
    os.chmod(home, 0o755)
    os.chown(home, uid, gid)
    try:
        yield Hostile(uid, gid, home)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", str(uid)], check=False)
        shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class Secret:
    """A root-only file (0600 in a 0700 directory) and its unique marker."""

    path: Path
    marker: bytes


@pytest.fixture
def root_secret(tmp_path: Path) -> Secret:
    d = tmp_path / "rootonly"
    d.mkdir(mode=0o700)
    marker = f"ROOTONLY_{secrets.token_hex(8)}".encode()
    path = d / "secret"
    # shaped like a perf map and an ELF-ish blob, so a reader that parses
    # it would keep the marker as a name
    path.write_bytes(b"".join(b"%x 10 %s_%d\n" % (0x1000 * i, marker, i) for i in range(1, 64)))
    os.chmod(path, 0o600)
    return Secret(path, marker)


def readable_bytes(path: Path) -> bytes:
    """A file's content as a reader would see it: gzip undone."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError):
            return data
    return data


@dataclass
class Agent:
    """A real `bpfprof run` as root, writing under `state`."""

    proc: subprocess.Popen[str]
    state: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def status_file(self) -> Path:
        return self.state / "status.json"

    @property
    def log(self) -> str:
        return (self.state / "agent.log").read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def intervals(self) -> int:
        return int(self.status().get("intervals", 0))

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def wait_for(self, cond: Callable[[], bool], timeout: float = 90, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited {self.proc.returncode}: {self.log[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what or 'the agent'}: {self.log[-3000:]}")

    def wait_intervals(self, more: int = 1, timeout: float = 90) -> None:
        """Wait until `more` intervals past the current one were reported."""
        target = self.intervals() + more
        self.wait_for(lambda: self.intervals() >= target, timeout, f"interval {target}")

    def assert_healthy(self, rss_limit: int = AGENT_RSS_LIMIT) -> None:
        assert self.proc.poll() is None, self.log[-3000:]
        self.wait_intervals(2)
        rss = self.rss()
        assert rss < rss_limit, f"agent RSS {rss >> 20} MiB over {rss_limit >> 20} MiB"

    def stop(self) -> None:
        """SIGTERM must end it (exit 0) within SIGTERM_WITHIN_S."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=SIGTERM_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"SIGTERM not honoured within {SIGTERM_WITHIN_S} s: {self.log[-3000:]}")
        assert self.proc.returncode == 0, self.log[-3000:]

    def outputs(self) -> list[Path]:
        return [p for p in self.state.rglob("*") if p.is_file()]

    def assert_no_secret(self, secret: Secret) -> None:
        for path in self.outputs():
            assert secret.marker not in readable_bytes(path), f"{path} holds root-only bytes"


@pytest.fixture
def start_agent(bpfprof_cmd: list[str], tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Start `bpfprof run` (interval 1 s, local pprof files) with extra args."""
    agents: list[Agent] = []

    def start(*args: str, env: dict[str, str] | None = None, state: Path | None = None) -> Agent:
        """`state`: an existing directory to use instead of one in root's tmp_path."""
        if state is None:
            state = tmp_path / f"agent{len(agents)}"
            state.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        cmd = [
            *bpfprof_cmd,
            "run",
            "--interval",
            "1",
            "--status-file",
            str(state / "status.json"),
            "--spool-dir",
            str(state / "spool"),
            "--output-dir",
            str(state / "profiles"),
            *args,
        ]
        with open(state / "agent.log", "w") as log:
            proc = subprocess.Popen(cmd, stderr=log, text=True, env={**base, **(env or {})})
        agent = Agent(proc, state)
        agents.append(agent)
        agent.wait_for(lambda: agent.intervals() >= 1, 120, "the first interval")
        return agent

    yield start
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
