"""A profile's duration is what was sampled: a COMMAND's life, not the BPF
compile before it (a 1.7 s CPU-bound command used to read 2.88 s, so pprof
showed it 57 % busy); with -d, from when the program was attached."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from tests.conftest import compile_c

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

# Spins on the CPU for MS milliseconds, then prints how long main ran.
SPIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
int main(int argc, char **argv)
{
    double t0 = now(), end = t0 + atof(argv[1]) / 1000;
    volatile unsigned long n = 0;
    while (now() < end)
        n++;
    printf("ran_ns %lld\n", (long long)((now() - t0) * 1e9));
    return 0;
}
"""


def go_duration(path: Path) -> float:
    """The "Duration: 1.70s" go tool pprof prints, in seconds."""
    top = subprocess.run(
        ["go", "tool", "pprof", "-top", str(path)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"Duration: ([\d.]+)(ms|s)\b", top)
    assert m, top
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


@pytest.mark.skipif(shutil.which("go") is None, reason="needs `go` for `go tool pprof`")
def test_command_duration_is_the_commands_life(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    src = tmp_path / "spin.c"
    src.write_text(SPIN)
    exe = compile_c(src, tmp_path / "spin", "-O2")
    out = tmp_path / "cpu.pb.gz"
    rec = subprocess.run(
        [*bpfprof_cmd, "record", "-o", str(out), "--", str(exe), "1700"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert rec.returncode == 0, rec.stderr
    ran = int(rec.stdout.split()[1]) / 1e9
    profile = decode(out.read_bytes())
    took = profile.duration_nanos / 1e9
    assert abs(took - ran) <= 0.1 * ran, (took, ran)
    assert abs(go_duration(out) - ran) <= 0.1 * ran, (go_duration(out), ran)


def test_duration_counts_from_the_attach(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    """-p PID -d 2 samples 2 s after the compile (about a second here), and
    the profile says 2 s, not the whole run of bpfprof."""
    out = tmp_path / "cpu.pb.gz"
    target = subprocess.Popen(["sleep", "60"])
    try:
        t0 = time.monotonic()
        rec = subprocess.run(
            [*bpfprof_cmd, "record", "-p", str(target.pid), "-d", "2", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wall = time.monotonic() - t0
    finally:
        target.kill()
        target.wait()
    assert rec.returncode == 0, rec.stderr
    took = decode(out.read_bytes()).duration_nanos / 1e9
    assert 2.0 <= took <= 2.3 < wall, (took, wall, rec.stderr)
