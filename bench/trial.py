"""One run of the fixed-work program: alone, or under one profiler.

Every mode runs the program the same way: it is started held (a shell
waiting on a pipe, which then execs the program under the same pid), the
profiler, if any, is started with `--pid`/`-p` of that pid and watched from
outside until its perf events are attached, and only then is the program
released. So both profilers filter one known process, nothing but the
program's own run is timed, and the profiler is still recording when the
program ends, which is when its CPU time and BPF statistics are read.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench import procfs

ATTACH_TIMEOUT = 60.0
ATTACH_POLL = 0.005
EXIT_TIMEOUT = 120.0
HOLD = 'read _ && exec "$0" "$@"'


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Profiler:
    """How to start one profiler on a pid, and how to count its samples.

    Both callables get the run's scratch directory; the tool's stdout is
    saved there as `stdout`.
    """

    name: str
    argv: Callable[[int, Path], list[str]]
    samples: Callable[[Path], int]


@dataclass
class Trial:
    mode: str
    rep: int
    load1: float
    workload_cpu_s: float
    workload_wall_s: float
    attach_s: float | None = None
    attach_cpu_s: float | None = None  # the profiler's own CPU time until attached
    rss_mib: float | None = None
    recording_s: float | None = None
    tool_cpu_recording_s: float | None = None
    tool_cpu_total_s: float | None = None
    bpf_run_time_ns: int | None = None  # all the profiler's programs
    bpf_perf_run_time_ns: int | None = None  # its perf-event program alone
    bpf_perf_runs: int | None = None
    samples: int | None = None

    @property
    def tool_cpu_percent(self) -> float | None:
        if self.tool_cpu_recording_s is None or not self.recording_s:
            return None
        return 100.0 * self.tool_cpu_recording_s / self.recording_s

    @property
    def bpf_ns_per_run(self) -> float | None:
        if self.bpf_perf_run_time_ns is None or not self.bpf_perf_runs:
            return None
        return self.bpf_perf_run_time_ns / self.bpf_perf_runs

    @property
    def bpf_ns_per_sample(self) -> float | None:
        """The perf-event program's time over the samples it took of the workload.

        Its runs on other CPUs and for other processes (rejected by the pid
        filter) are included: they are part of what one sample costs.
        """
        if self.bpf_perf_run_time_ns is None or not self.samples:
            return None
        return self.bpf_perf_run_time_ns / self.samples

    @property
    def bpf_other_ns(self) -> int | None:
        """BPF time of the profiler's other programs (e.g. exec tracepoints),
        which depends on what the rest of the host does, not on sampling."""
        if self.bpf_run_time_ns is None or self.bpf_perf_run_time_ns is None:
            return None
        return self.bpf_run_time_ns - self.bpf_perf_run_time_ns


class Held:
    """The workload, forked and waiting for the word to exec."""

    def __init__(self, program: Path, iterations: int) -> None:
        self.proc = subprocess.Popen(
            ["sh", "-c", HOLD, str(program), str(iterations)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def finish(self) -> tuple[float, float]:
        """Wait for the program: (its CPU seconds from wait4, its own wall seconds)."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read().decode()
        _, status, usage = os.wait4(self.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0 or len(out.split()) != 3:
            raise BenchError(f"the workload failed (status {self.proc.returncode}): {out!r}")
        wall_ns = int(out.split()[0])
        return usage.ru_utime + usage.ru_stime, wall_ns / 1e9

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()


def run_alone(program: Path, iterations: int, rep: int) -> Trial:
    load = os.getloadavg()[0]
    held = Held(program, iterations)
    held.release()
    cpu, wall = held.finish()
    return Trial("alone", rep, load, cpu, wall)


def run_profiled(profiler: Profiler, program: Path, iterations: int, rep: int) -> Trial:
    load = os.getloadavg()[0]
    held = Held(program, iterations)
    with tempfile.TemporaryDirectory(prefix="bpfprof-bench-") as name:
        tmp = Path(name)
        try:
            with open(tmp / "stdout", "wb") as out, open(tmp / "stderr", "w+b") as err:
                trial = _profile(profiler, held, tmp, out, err, rep, load)
        finally:
            held.kill()
        trial.samples = profiler.samples(tmp)
    return trial


def _profile(
    profiler: Profiler,
    held: Held,
    tmp: Path,
    out: BinaryIO,
    err: BinaryIO,
    rep: int,
    load: float,
) -> Trial:
    argv = profiler.argv(held.pid, tmp)
    started = time.monotonic()
    tool = subprocess.Popen(argv, stdout=out, stderr=err)
    try:
        attach = wait_attached(tool, profiler.name, err) - started
        cpu0, t0 = procfs.cpu_seconds(tool.pid), time.monotonic()
        held.release()
        cpu, wall = held.finish()
        cpu1, t1 = procfs.cpu_seconds(tool.pid), time.monotonic()
        fds = procfs.snapshot(tool.pid)
        tool.send_signal(signal.SIGINT)
        usage = wait_exit(tool, profiler.name, err)
    finally:
        if tool.returncode is None:
            tool.kill()
            tool.wait()
    perf = fds.perf_prog()
    return Trial(
        profiler.name,
        rep,
        load,
        cpu,
        wall,
        attach_s=attach,
        attach_cpu_s=cpu0,
        rss_mib=usage.ru_maxrss / 1024,
        recording_s=t1 - t0,
        tool_cpu_recording_s=cpu1 - cpu0,
        tool_cpu_total_s=usage.ru_utime + usage.ru_stime,
        bpf_run_time_ns=fds.total_run_time_ns(),
        bpf_perf_run_time_ns=perf.run_time_ns if perf else None,
        bpf_perf_runs=perf.run_cnt if perf else None,
    )


def wait_attached(tool: subprocess.Popen[bytes], name: str, err: BinaryIO) -> float:
    """The monotonic time at which `tool` had its perf events attached."""
    ncpus = os.cpu_count() or 1
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while time.monotonic() < deadline:
        if tool.poll() is not None:
            raise BenchError(
                f"{name} exited with status {tool.returncode} before attaching: {tail(err)}"
            )
        try:
            if procfs.snapshot(tool.pid).attached(ncpus):
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(ATTACH_POLL)
    raise BenchError(f"{name} did not attach within {ATTACH_TIMEOUT:.0f}s: {tail(err)}")


def wait_exit(tool: subprocess.Popen[bytes], name: str, err: BinaryIO) -> resource.struct_rusage:
    """Reap the tool with wait4 for its own peak RSS and CPU time."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(tool.pid, os.WNOHANG)
        if pid:
            tool.returncode = os.waitstatus_to_exitcode(status)
            if tool.returncode != 0:
                raise BenchError(f"{name} exited with status {tool.returncode}: {tail(err)}")
            return usage
        time.sleep(0.02)
    raise BenchError(f"{name} did not exit within {EXIT_TIMEOUT:.0f}s of SIGINT")


def tail(err: BinaryIO) -> str:
    """The last line the tool wrote to stderr, for an error message."""
    err.seek(0)
    lines = err.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"
