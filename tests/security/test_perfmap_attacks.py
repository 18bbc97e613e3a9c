"""Case 1: a local user's /tmp/perf-PID.map cannot be turned against the agent.

The user runs a process that executes from anonymous memory (where only a
perf map can name the code), and plants its perf map as: a symlink to a
root-only file, a FIFO, a 300 MB map of 20 million lines, a symlink to
/dev/urandom. On the old code these put root-only lines in the profile,
blocked the main loop for good (SIGTERM ignored), OOM-killed the agent,
and stalled it at 2.4 GiB. And a real JIT-like program whose map appears
and grows after the agent first saw it gets all its code named (the old
reader, never created when the map was missing at first sight, named
none of it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.model import Sample
from tests.security.conftest import Agent, Hostile, Secret

# `jmp .` at a fixed address: every sample's leaf is HOT, in an anonymous
# mapping. HOT is covered by line 16 of the root secret ("10000 10 …"), so
# a reader that followed the link would name the leaf with secret bytes.
SPIN_AT_HOT = r"""
#include <sys/mman.h>
int main(void) {
    unsigned char *p = mmap((void *)0x10000, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) return 1;
    p[0] = 0xEB; p[1] = 0xFE; /* jmp . */
    ((void (*)(void))p)();
    return 0;
}
"""
HOT = 0x10000

# 20 million well-formed lines (none covering HOT), written fast
HUGE_MAP = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "w");
    if (!f) return 1;
    static char buf[1 << 20];
    setvbuf(f, buf, _IOFBF, sizeof buf);
    for (unsigned long i = 0; i < 20000000UL; i++)
        fprintf(f, "%lx 10 a\n", 0x100000000UL + i * 16);
    return fclose(f) != 0;
}
"""

# A JIT: code copied into executable memory mapped at start; for 3 s it
# runs C code only (no map yet), then writes its map's first line and runs
# the first region, 4 s later appends the second and runs that for good.
JIT = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static const unsigned char loop[] = {0x48, 0xFF, 0xCF, 0x75, 0xFB, 0xC3}; /* dec rdi; jnz; ret */
static volatile unsigned long sink;
static void run_for(int seconds, void (*fn)(long)) {
    time_t until = time(NULL) + seconds;
    while (time(NULL) < until) {
        if (fn) fn(1000000); else for (long i = 0; i < 1000000; i++) sink += i;
    }
}
int main(void) {
    unsigned char *a = mmap(NULL, 8192, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) return 1;
    unsigned char *b = a + 4096;
    memcpy(a, loop, sizeof loop);
    memcpy(b, loop, sizeof loop);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    run_for(3, NULL);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f, "%lx %zx jit_region_first\n", (unsigned long)a, sizeof loop);
    fflush(f);
    run_for(4, (void (*)(long))a);
    fprintf(f, "%lx %zx jit_region_second\n", (unsigned long)b, sizeof loop);
    fflush(f);
    for (;;) run_for(1, (void (*)(long))b);
}
"""


def _map_path(pid: int) -> Path:
    return Path(f"/tmp/perf-{pid}.map")


@pytest.fixture
def spinner(hostile: Hostile) -> Iterator[int]:
    """The user's process spinning at HOT; its perf map path removed after."""
    exe = hostile.compile(SPIN_AT_HOT, "spin_at_hot")
    proc = hostile.popen([str(exe)])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        _map_path(proc.pid).unlink(missing_ok=True)


def _samples(agent: Agent, pid: int) -> list[Sample]:
    """The pid's samples in every complete rolling profile."""
    out: list[Sample] = []
    for path in sorted((agent.state / "profiles").glob("*.pb.gz")):
        try:
            profile = decode(path.read_bytes())
        except Exception:  # still being written
            continue
        out += [s for s in profile.samples if s.num_labels.get("pid") == pid]
    return out


def _wait_samples(agent: Agent, pid: int, want: Callable[[Sample], bool], what: str) -> None:
    agent.wait_for(lambda: any(map(want, _samples(agent, pid))), 90, what)


def _totals(agent: Agent, counter: str) -> int:
    """A self-metric from the agent's status file."""
    return int(agent.status().get("totals", {}).get(counter, 0))


def _leaf_at_hot(s: Sample) -> bool:
    return bool(s.locations) and s.locations[0].address == HOT


def _leaf_name(s: Sample) -> str:
    frames = s.locations[0].frames if s.locations else ()
    return frames[0].function if frames else ""


def test_a_symlink_to_a_root_only_file_names_nothing(
    hostile: Hostile, spinner: int, root_secret: Secret, start_agent: Callable[..., Agent]
) -> None:
    hostile.run(["ln", "-s", str(root_secret.path), str(_map_path(spinner))]).check_returncode()
    agent = start_agent()
    _wait_samples(agent, spinner, _leaf_at_hot, f"samples of pid {spinner} at {HOT:#x}")
    agent.assert_healthy()
    assert _totals(agent, "perf_map_refused") == 1
    agent.stop()
    agent.assert_no_secret(root_secret)
    # the leaf the secret's line 16 would have named stays an address
    assert all(not s.locations[0].frames for s in _samples(agent, spinner) if _leaf_at_hot(s))


def test_a_fifo_neither_blocks_the_agent_nor_its_sigterm(
    hostile: Hostile, spinner: int, start_agent: Callable[..., Agent]
) -> None:
    hostile.run(["mkfifo", str(_map_path(spinner))]).check_returncode()
    agent = start_agent()
    # past the moment it first looked at the map (the old agent never was)
    _wait_samples(agent, spinner, _leaf_at_hot, f"samples of pid {spinner}")
    agent.assert_healthy()
    assert _totals(agent, "perf_map_refused") == 1
    agent.stop()


def test_a_huge_map_is_read_within_bounds(
    hostile: Hostile, spinner: int, start_agent: Callable[..., Agent]
) -> None:
    writer = hostile.compile(HUGE_MAP, "huge_map", "-O2")
    hostile.run([str(writer), str(_map_path(spinner))], timeout=120).check_returncode()
    assert _map_path(spinner).stat().st_size > 250 << 20
    agent = start_agent()
    # each interval misses HOT and looks again: the reader goes on until its bound
    agent.wait_for(lambda: _totals(agent, "perf_map_truncated") >= 1, 180, "the entry bound")
    agent.assert_healthy()
    _wait_samples(agent, spinner, _leaf_at_hot, f"samples of pid {spinner}")
    agent.assert_healthy()
    agent.stop()


def test_a_symlink_to_dev_urandom_is_refused(
    hostile: Hostile, spinner: int, start_agent: Callable[..., Agent]
) -> None:
    hostile.run(["ln", "-s", "/dev/urandom", str(_map_path(spinner))]).check_returncode()
    agent = start_agent()
    _wait_samples(agent, spinner, _leaf_at_hot, f"samples of pid {spinner}")
    agent.assert_healthy()
    agent.assert_healthy()  # and again: each interval's miss looks at the map again
    assert _totals(agent, "perf_map_refused") == 1
    agent.stop()


def _jit_state(agent: Agent, pid: int, exited: int | None) -> str:
    """What a failed wait saw: whether the program ran, its map, its leaves."""
    try:
        text = _map_path(pid).read_text()[:500]
    except OSError as exc:
        text = f"unreadable: {exc}"
    leaves: dict[str, int] = {}
    for s in _samples(agent, pid):
        leaf = _leaf_name(s) or (hex(s.locations[0].address) if s.locations else "-")
        leaves[leaf] = leaves.get(leaf, 0) + 1
    totals = agent.status().get("totals", {})
    perf = {k: v for k, v in totals.items() if "perf_map" in k or "miss" in k}
    return (
        f"jit pid {pid} {'exited ' + str(exited) if exited is not None else 'running'}; "
        f"map: {text!r}; leaves: {leaves}; totals: {perf}; log: {agent.log[:3000]}"
    )


def test_jit_code_that_appears_after_the_first_look_is_named(
    hostile: Hostile, start_agent: Callable[..., Agent]
) -> None:
    """The user's own map, as the user's runtime writes it, over time."""
    exe = hostile.compile(JIT, "jit", "-O1")
    agent = start_agent()
    proc = hostile.popen([str(exe)])
    try:
        for name in ("jit_region_first", "jit_region_second"):
            try:
                _wait_samples(agent, proc.pid, lambda s, n=name: _leaf_name(s) == n, name)
            except pytest.fail.Exception:
                pytest.fail(_jit_state(agent, proc.pid, proc.poll()))
        agent.assert_healthy()
        agent.stop()
    finally:
        proc.kill()
        proc.wait()
        _map_path(proc.pid).unlink(missing_ok=True)
    assert os.path.exists(agent.state / "profiles")
