"""Off-CPU kernel stacks start where the thread left the CPU (__schedule),
not in the profiler's own frames: the BPF program on sched_switch and the
kernel's code that ran it (bpf_trace_run4, and __traceiter_sched_switch
when a second probe shares the tracepoint, as here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.model import KERNEL
from agent.pipeline.resolve import BPF_PROGRAM, TRAMPOLINES
from tests.conftest import PROGRAMS, compile_c

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]


def test_offcpu_kernel_stacks_start_at_schedule(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = compile_c(PROGRAMS / "sleeper.c", tmp_path / "sleeper", "-O2", "-g")
    out = tmp_path / "offcpu.pb.gz"
    # a second probe on sched_switch for the whole run: the kernel then goes
    # through __traceiter_sched_switch, one frame more than with one probe
    other = subprocess.Popen(
        [*bpfprof_cmd, "record", "-t", "offcpu", "-d", "30", "-o", str(tmp_path / "other.folded")],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stderr is not None and "recording" in other.stderr.readline()
        rec = subprocess.run(
            [*bpfprof_cmd, "record", "-t", "offcpu", "-o", str(out), "--", str(exe), "40", "20"],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert rec.returncode == 0, rec.stderr
    finally:
        other.terminate()
        other.wait(timeout=60)
    profile = decode(out.read_bytes())
    kernel = [
        [loc.frames[-1].function for loc in s.locations if loc.kind == KERNEL and loc.frames]
        for s in profile.samples
    ]
    kernel = [k for k in kernel if k]
    assert kernel, "no kernel stacks"
    own = [k for k in kernel if any(f.startswith((*TRAMPOLINES, BPF_PROGRAM)) for f in k)]
    assert not own, own[:3]
    leaves = {k[0] for k in kernel}
    assert leaves == {"__schedule"}, leaves
