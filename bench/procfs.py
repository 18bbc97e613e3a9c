"""What the benchmark reads about a profiler process from /proc.

Readers take a pid and touch /proc; parsers take the text and are unit
tested. Everything here works on any process, bpfprof or BCC's tools alike,
so both are measured the same way from outside.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PERF_EVENT_LINK = "anon_inode:[perf_event]"
BPF_PROG_LINK = "anon_inode:bpf-prog"
PROG_TYPE_TRACEPOINT = 5
PROG_TYPE_PERF_EVENT = 7


@dataclass(frozen=True)
class ProgStats:
    """One loaded BPF program as its fdinfo shows it.

    run_time_ns and run_cnt only grow while BPF statistics are enabled
    (kernel.bpf_stats_enabled or a BPF_ENABLE_STATS fd): otherwise both are 0.
    """

    prog_id: int
    prog_type: int
    run_time_ns: int
    run_cnt: int


@dataclass(frozen=True)
class FdSnapshot:
    """The profiler-relevant file descriptors of a process at one moment."""

    perf_events: int
    progs: tuple[ProgStats, ...]

    def attached(self, ncpus: int) -> bool:
        """True once a perf-event program exists and every CPU has its event.

        BCC loads a perf-event program only inside attach_perf_event and then
        opens one perf event per CPU; each attached tracepoint holds one more
        perf event, so those are counted out.
        """
        perf_progs = sum(p.prog_type == PROG_TYPE_PERF_EVENT for p in self.progs)
        tracepoints = sum(p.prog_type == PROG_TYPE_TRACEPOINT for p in self.progs)
        return perf_progs > 0 and self.perf_events >= ncpus + tracepoints

    def perf_prog(self) -> ProgStats | None:
        return next((p for p in self.progs if p.prog_type == PROG_TYPE_PERF_EVENT), None)

    def total_run_time_ns(self) -> int:
        return sum(p.run_time_ns for p in self.progs)


def parse_fdinfo(text: str) -> dict[str, str]:
    """`key:\\tvalue` lines of /proc/PID/fdinfo/FD as a dict."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def prog_stats(fields: dict[str, str]) -> ProgStats | None:
    """The BPF program described by parsed fdinfo, or None for any other fd."""
    try:
        return ProgStats(
            prog_id=int(fields["prog_id"]),
            prog_type=int(fields["prog_type"]),
            run_time_ns=int(fields.get("run_time_ns", "0")),
            run_cnt=int(fields.get("run_cnt", "0")),
        )
    except (KeyError, ValueError):
        return None


def parse_stat_cpu(text: str, clock_ticks: int) -> float:
    """The process's own user+system CPU seconds from /proc/PID/stat.

    Fields 14 and 15 (utime, stime) are the process's own time in clock
    ticks; its reaped children's time (fields 16, 17) is left out. The
    command name (field 2) may hold spaces and parentheses, so fields are
    counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / clock_ticks


def sum_folded(text: str) -> int:
    """Total samples in folded-stack text (`frame;frame;... COUNT` lines)."""
    total = 0
    for line in text.splitlines():
        _, sep, count = line.rpartition(" ")
        if sep and count.isdigit():
            total += int(count)
    return total


def snapshot(pid: int) -> FdSnapshot:
    """Count the perf-event fds of `pid` and read the fdinfo of its BPF programs.

    fds come and go while the profiler starts, so a vanished fd is skipped.
    """
    perf_events = 0
    progs: dict[int, ProgStats] = {}
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
            if link == PERF_EVENT_LINK:
                perf_events += 1
            elif link == BPF_PROG_LINK:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    stats = prog_stats(parse_fdinfo(f.read()))
                if stats is not None:
                    progs[stats.prog_id] = stats  # one program may have several fds
        except FileNotFoundError:
            continue
    return FdSnapshot(perf_events, tuple(progs.values()))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        return parse_stat_cpu(f.read(), os.sysconf("SC_CLK_TCK"))
