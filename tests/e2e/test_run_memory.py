"""The continuous agent never holds BCC's compiler: every program is compiled
in a short-lived loader child, so the agent process does not map libbcc.so,
LLVM or clang (about 85 MiB of resident file pages, and the heap a compile
leaves behind) once all four profile types are running."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PROGRAMS, compile_c
from tests.e2e.test_run import agent_log, start_agent, stop

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

TYPES = ("cpu", "offcpu", "lock", "alloc")
COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc.so")


def mapped_files(pid: int) -> set[str]:
    """The files a process maps, from /proc/PID/maps."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            out.add(parts[5])
    return out


def test_the_agent_process_maps_no_compiler(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    out = tmp_path / "profiles"
    config = tmp_path / "config.toml"
    enabled = "".join(f"[profiles.{t}]\nenabled = true\n" for t in TYPES[1:])
    config.write_text(f'interval = 1\n[output]\ndir = "{out}"\n{enabled}')
    agent = start_agent(bpfprof_cmd, tmp_path, "-c", str(config))
    # contention for the lock type to report, which an idle host may not have
    # (4 threads on one mutex until killed; it starts at EOF on stdin)
    lockstorm = compile_c(PROGRAMS / "lockstorm.c", tmp_path / "lockstorm", "-O2", "-pthread")
    storm = subprocess.Popen(
        [str(lockstorm), "1000000", "4", "20000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        # four programs to compile and verify, the walker's with Python frames
        # in each (2-3.5 s apiece idle): generous for a busy host
        deadline = time.monotonic() + 300
        while not all(list(out.glob(f"*-{t}.pb.gz")) for t in TYPES):
            if agent.poll() is not None:
                pytest.fail(f"agent exited {agent.returncode}: {agent_log(agent)}")
            if time.monotonic() > deadline:
                pytest.fail(f"not every type reported: {sorted(p.name for p in out.iterdir())}")
            time.sleep(0.5)
        files = mapped_files(agent.pid)
        children = subprocess.run(
            ["pgrep", "-P", str(agent.pid)], capture_output=True, text=True
        ).stdout.split()
        stop(agent)
    finally:
        storm.kill()
        storm.wait()
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    compiler = sorted(f for f in files if any(lib in f for lib in COMPILER_LIBRARIES))
    assert compiler == [], compiler
    assert any("libbcc_bpf.so" in f for f in files)  # maps and links go through it
    assert children == []  # every loader child has exited
