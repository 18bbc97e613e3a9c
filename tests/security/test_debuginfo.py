"""Case 3: the debug-file search cannot be turned against the agent.

A user builds stripped programs whose separate debug file it names and
then replaces it, as reproduced on the old code:

- a `.gnu_debuglink` target next to the binary made a symlink to a
  root-only file: root opened it and read it whole for the CRC;
- the same target made a FIFO;
- in a chroot the user owns, the build-ID debug file
  (/usr/lib/debug/.build-id/xx/yyy.debug inside it) made a FIFO: the old
  agent's open() blocked its main loop for good, SIGTERM ignored.

Against a real `bpfprof run`: it keeps reporting, stops on SIGTERM
within 5 s, names the programs' functions from their own .symtab, and
never reads the secret: not a byte in its outputs, and the secret's atime
(set well before its mtime, which relatime updates on the next read)
does not move.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security.conftest import Agent, Hostile, Secret, readable_bytes

SPIN = r"""
volatile unsigned long sink;
__attribute__((noinline)) void FN(void) { for (;;) sink++; }
int main(void) { FN(); return 0; }
"""
OLD_ATIME_NS = 10**18  # 2001: well before any mtime here


def _split(hostile: Hostile, name: str, *flags: str) -> Path:
    """Build `name` (spinning in `<name>_own_fn`), keep its .symtab, move its
    DWARF to `name`.debug next to it (named by .gnu_debuglink), and
    remove that file: the user decides what the name will be."""
    src = hostile.home / f"{name}.c"
    src.write_text(SPIN)
    full, out, debug = (hostile.home / f"{name}{s}" for s in (".full", "", ".debug"))
    subprocess.run(
        ["gcc", "-O1", "-g", f"-DFN={name}_own_fn", "-Wl,--build-id=sha1", *flags, "-o", full, src],
        check=True,
    )
    subprocess.run(["objcopy", "--only-keep-debug", full, debug], check=True)
    subprocess.run(
        ["objcopy", "--strip-debug", f"--add-gnu-debuglink={debug.name}", full, out],
        check=True,
        cwd=hostile.home,
    )
    debug.unlink()
    full.unlink()
    hostile.give(out)
    return out


def _build_id(path: Path) -> str:
    notes = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    return notes.split("Build ID:")[1].split()[0]


def _atime_works(probe: Path) -> bool:
    """Whether a read moves an old atime on this mount (relatime, not noatime)."""
    probe.write_bytes(b"x")
    os.utime(probe, ns=(OLD_ATIME_NS, probe.stat().st_mtime_ns))
    probe.read_bytes()
    return probe.stat().st_atime_ns != OLD_ATIME_NS


@pytest.fixture
def planted(hostile: Hostile, root_secret: Secret) -> list[tuple[str, list[str]]]:
    """(own function, command) of each program the user runs."""
    link = _split(hostile, "dbglink")
    hostile.run(["ln", "-s", str(root_secret.path), "dbglink.debug"], check=True)
    fifo = _split(hostile, "dbgfifo")
    hostile.run(["mkfifo", "dbgfifo.debug"], check=True)
    # a chroot the user owns, holding a static program and, at its build-ID
    # debug path, a FIFO
    jail = hostile.home / "jail"
    jail.mkdir()
    hostile.give(jail)
    static = _split(hostile, "dbgjail", "-static")
    hostile.run(["mv", str(static), str(jail / "prog")], check=True)
    build_id = _build_id(jail / "prog")
    debug_dir = f"jail/usr/lib/debug/.build-id/{build_id[:2]}"
    hostile.run(["mkdir", "-p", debug_dir], check=True)
    hostile.run(["mkfifo", f"{debug_dir}/{build_id[2:]}.debug"], check=True)
    assert (hostile.home / "dbglink.debug").is_symlink()
    return [
        ("dbglink_own_fn", hostile.argv([str(link)])),
        ("dbgfifo_own_fn", hostile.argv([str(fifo)])),
        (
            "dbgjail_own_fn",
            ["chroot", f"--userspec={hostile.uid}:{hostile.gid}", str(jail), "/prog"],
        ),
    ]


def test_debug_files_the_user_planted_are_not_read(
    planted: list[tuple[str, list[str]]],
    hostile: Hostile,
    root_secret: Secret,
    start_agent: Callable[..., Agent],
    tmp_path: Path,
) -> None:
    watch_atime = _atime_works(tmp_path / "atime-probe")
    os.utime(root_secret.path, ns=(OLD_ATIME_NS, root_secret.path.stat().st_mtime_ns))
    agent = start_agent()
    programs = [subprocess.Popen(cmd, cwd=hostile.home) for _, cmd in planted]
    try:
        for name, _ in planted:
            agent.wait_for(
                lambda name=name: any(name.encode() in readable_bytes(p) for p in agent.outputs()),
                60,
                f"a profile naming {name}",
            )
        agent.assert_healthy()
        started = time.monotonic()
        agent.stop()
        assert time.monotonic() - started < 5
    finally:
        for proc in programs:
            proc.kill()
            proc.wait()
    agent.assert_no_secret(root_secret)
    if watch_atime:
        assert root_secret.path.stat().st_atime_ns == OLD_ATIME_NS, "the secret was read"
