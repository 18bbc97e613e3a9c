"""The CPU BPF program, loaded for real: layout, counting, double buffering."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import BpfLimits, RecordConfig, SourceOptions
from agent.kernel.bcc_loader import compile_program, render
from agent.kernel.layout import ProcessEvent, SampleKey
from agent.sources.cpu import CpuSource, bpf_cflags, cflags_for

pytestmark = pytest.mark.bpf


def test_python_mirror_matches_what_bcc_compiled() -> None:
    program = compile_program(
        "cpu.bpf.c", bpf_cflags(BpfLimits(), filter_pids=True, follow_forks=True)
    )
    try:
        key = program["counts0"].Key
        assert ctypes.sizeof(key) == ctypes.sizeof(SampleKey)
        for name, *_ in SampleKey._fields_:
            assert getattr(key, name).offset == getattr(SampleKey, name).offset, name
        assert ctypes.sizeof(ProcessEvent) == 8
    finally:
        program.cleanup()


def busy(seconds: float) -> subprocess.Popen[bytes]:
    """A shell spinning on builtins only (no child processes); killed by the test."""
    loop = f"i=0; while [ $i -lt {int(seconds * 10_000_000)} ]; do i=$((i+1)); done"
    return subprocess.Popen(["sh", "-c", loop])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_for(source: CpuSource, seconds: float, seen: list[int]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        source.poll(50, seen.append)


def test_counts_a_targeted_process_only_and_loses_nothing_across_drains() -> None:
    proc = busy(5)
    source = CpuSource(SourceOptions(frequency=199, filter_pids=True))
    source.add_targets([proc.pid])
    source.start()
    seen: list[int] = []
    drained = []
    try:
        cpu_before = cpu_seconds(proc.pid)
        for _ in range(3):
            run_for(source, 0.5, seen)
            drained.extend(source.drain())
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        proc.kill()
        proc.wait()
        drained.extend(source.drain())  # both halves: nothing can be left behind
        drained.extend(source.drain())
        counters = source.counters()
    finally:
        source.close()
        proc.kill()
    total = sum(s.values[0] for s in drained)
    assert {s.key.pid for s in drained} == {proc.pid}
    assert seen == [proc.pid]  # one new-process event, however many samples
    assert total == counters["samples"]  # every counted sample was drained
    # The process's own CPU time is the ground truth (the host may be busy):
    # expect cpu_used * 199 samples, within 4 sigma plus the 10 ms tick of utime.
    expected = cpu_used * 199
    assert abs(total - expected) <= 4 * expected**0.5 + 2 * 199 * 0.01, (total, expected)
    assert counters["map_full"] == 0
    assert all(s.key.comm == "sh" and s.key.stack.user for s in drained)


def test_whole_system_sees_a_busy_process() -> None:
    proc = busy(3)
    source = CpuSource(SourceOptions())
    source.start()
    seen: list[int] = []
    try:
        run_for(source, 1.0, seen)
        pids = {s.key.pid for s in source.drain()}
    finally:
        source.close()
        proc.kill()
    assert proc.pid in pids and proc.pid in seen
    assert 0 not in pids  # idle is not CPU time


def test_print_bpf_shows_the_flags_as_defines(tmp_path: Path) -> None:
    text = render("cpu.bpf.c", cflags_for(RecordConfig(command=("true",)).source_options()))
    assert "#define FILTER_PIDS 1" in text and "#define FOLLOW_FORKS 1" in text
    assert "struct sample_key" in text and '#include "common.h"' not in text
