"""Case 2: a local user runs a program whose own file is an ELF, DWARF or CFI bomb.

Each bomb is a real executable (a busy loop compiled here, its program
headers intact, so it runs) whose section headers were rewritten
(tests/elfcraft.py). The unprivileged user runs it twice while a real
`bpfprof run` profiles the host. The agent must stay under its memory
bound (peak RSS, VmHWM, not just the RSS of the moment), keep reporting
every interval, count the bomb once (a second process mapping the same
file finds it remembered), and honour SIGTERM.

Before the per-file budget: the compressed .symtab / .eh_frame and the
MiniDebugInfo bomb decompressed 512 MiB (claimed 6 GiB) into the agent;
the DWARF bomb read 7 x 500 MiB; the ULEB128 run stalled the loop 40 s+.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.elfcraft import SHF_COMPRESSED, SHT_SYMTAB, NewSection, rewrite, uleb_run, xz, zlib_bomb
from tests.security.conftest import AGENT_RSS_LIMIT, Agent, Hostile

SHF_ALLOC = 0x2
SPIN = "int main(void) { volatile unsigned long x = 0; for (;;) x++; }\n"
DWARF_NAMES = ("info", "abbrev", "line", "str", "ranges", "aranges", "line_str")


@pytest.fixture(scope="module")
def zbomb() -> bytes:
    """6 GiB claimed, 512 MiB real: a compressed section worth an OOM."""
    return zlib_bomb(6 << 30, 512 << 20)


def _symtab(blob: bytes, bomb: bytes) -> tuple[bytes, int]:
    # padded to whole symbols: pyelftools refuses other sizes before we look
    padded = bomb + bytes(-len(bomb) % 24)
    sec = NewSection(".symtab", padded, type=SHT_SYMTAB, flags=SHF_COMPRESSED)
    return rewrite(blob, replace={".symtab": sec})


def _eh_frame(blob: bytes, bomb: bytes) -> tuple[bytes, int]:
    sec = NewSection(".eh_frame", bomb, flags=SHF_ALLOC | SHF_COMPRESSED)
    return rewrite(blob, replace={".eh_frame": sec})


def _uleb(blob: bytes, _: bytes) -> tuple[bytes, int]:
    return rewrite(
        blob, replace={".eh_frame": NewSection(".eh_frame", uleb_run(1_500_000), flags=2)}
    )


def _dwarf(blob: bytes, _: bytes) -> tuple[bytes, int]:
    return rewrite(blob, add=[NewSection(f".debug_{n}", hole=500 << 20) for n in DWARF_NAMES])


# name -> (craft, compile flags, status counter that must count it once, or None)
Craft = Callable[[bytes, bytes], tuple[bytes, int]]
BOMBS: dict[str, tuple[Craft, tuple[str, ...], str | None]] = {
    "symtab-zlib-6g": (_symtab, (), "elf_budget_exceeded"),
    "eh-frame-zlib-6g": (_eh_frame, (), "unwind_budget_exceeded"),
    "minidebuginfo": (lambda b, z: (b, 0), ("-s",), "elf_budget_exceeded"),
    "dwarf-7x500m": (_dwarf, (), "elf_budget_exceeded"),
    "eh-frame-uleb-1.5m": (_uleb, (), None),
}


def craft(hostile: Hostile, name: str, zbomb: bytes) -> Path:
    make, flags, _ = BOMBS[name]
    prog = hostile.compile(SPIN, f"spin-{name}", "-O1", *flags)
    blob = prog.read_bytes()
    if name == "minidebuginfo":
        # the inner ELF (unstripped, its .symtab a bomb) in .gnu_debugdata
        inner, _ = _symtab(hostile.compile(SPIN, "inner", "-O1").read_bytes(), zbomb)
        data, hole = rewrite(blob, add=[NewSection(".gnu_debugdata", xz(inner))])
    else:
        data, hole = make(blob, zbomb)
    path = hostile.home / f"bomb-{name}"
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(len(data) + hole)  # sparse: nothing stored for the holes
    os.chmod(path, 0o755)
    return hostile.give(path)


def peak_rss(agent: Agent) -> int:
    """VmHWM: the highest RSS the agent ever had, so a spike is not missed."""
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def total(agent: Agent, key: str) -> int:
    totals: dict[str, Any] = agent.status().get("totals", {})
    return int(totals.get(key, 0))


@pytest.fixture
def spawn(hostile: Hostile) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path) -> subprocess.Popen[str]:
        proc = hostile.popen([str(path)])
        procs.append(proc)
        time.sleep(0.1)
        assert proc.poll() is None, f"{path.name} does not run: it must stay a real executable"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_costs_bounded_memory_and_time(
    name: str,
    hostile: Hostile,
    zbomb: bytes,
    start_agent: Callable[..., Agent],
    spawn: Callable[[Path], subprocess.Popen[str]],
) -> None:
    # GIVEN a real agent and a bomb the hostile user can run
    agent = start_agent()
    bomb = craft(hostile, name, zbomb)
    counter = BOMBS[name][2]
    # WHEN the user runs it
    spawn(bomb)
    if counter is not None:
        agent.wait_for(lambda: total(agent, counter) >= 1, 60, f"{counter} to count {name}")
    # THEN the agent keeps reporting once a second: no parse holds its loop
    started, first = time.monotonic(), agent.intervals()
    agent.wait_intervals(5, timeout=20)
    per_interval = (time.monotonic() - started) / (agent.intervals() - first)
    assert per_interval < 2.5, f"intervals every {per_interval:.1f} s with {name} running"
    # AND a second process of the same file is not parsed again
    before = total(agent, counter) if counter else 0
    spawn(bomb)
    agent.wait_intervals(3)
    if counter is not None:
        assert total(agent, counter) == before, f"{name} parsed again for a second process"
    agent.assert_healthy()
    assert peak_rss(agent) < AGENT_RSS_LIMIT, f"peak RSS {peak_rss(agent) >> 20} MiB"
    agent.stop()
