"""The benchmark's /proc parsers and its paired statistics."""

from __future__ import annotations

import pytest

from bench.procfs import (
    PROG_TYPE_PERF_EVENT,
    PROG_TYPE_TRACEPOINT,
    FdSnapshot,
    ProgStats,
    parse_fdinfo,
    parse_stat_cpu,
    prog_stats,
    sum_folded,
)
from bench.summary import slowdown
from bench.trial import Trial

PROG_FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t17
ino:\t26
prog_type:\t7
prog_jited:\t1
prog_tag:\t37c35d2aaa9a0897
memlock:\t4096
prog_id:\t288
run_time_ns:\t123456
run_cnt:\t42
recursion_misses:\t0
verified_insns:\t69
"""


def test_fdinfo_of_a_bpf_program() -> None:
    stats = prog_stats(parse_fdinfo(PROG_FDINFO))
    assert stats == ProgStats(prog_id=288, prog_type=7, run_time_ns=123456, run_cnt=42)


def test_fdinfo_of_an_older_kernel_without_run_stats_counts_zero() -> None:
    text = "prog_type:\t5\nprog_id:\t9\n"
    assert prog_stats(parse_fdinfo(text)) == ProgStats(9, 5, 0, 0)


@pytest.mark.parametrize("text", ["pos:\t0\nflags:\t02\n", "prog_type:\tx\nprog_id:\t1\n", ""])
def test_fdinfo_that_is_not_a_program_gives_none(text: str) -> None:
    assert prog_stats(parse_fdinfo(text)) is None


def test_stat_cpu_counts_own_time_only_and_survives_odd_command_names() -> None:
    # comm "a) b (c" holds a space and parentheses; utime 150, stime 50,
    # cutime 1000, cstime 1000 ticks: the children's time is left out.
    fields = ["S", "1", "1", "1", "0", "-1", "4194560", "10", "0", "0", "0"]
    fields += ["150", "50", "1000", "1000", "20", "0", "1"]
    text = "1234 (a) b (c) " + " ".join(fields) + "\n"
    assert parse_stat_cpu(text, clock_ticks=100) == pytest.approx(2.0)


def test_folded_counts_are_summed_and_junk_lines_skipped() -> None:
    text = "wl;main;mix 600\nwl;[unknown] 7\n\nWARNING: 2 stack traces lost\nwl;a b 3\n"
    assert sum_folded(text) == 610


def _prog(kind: int, pid: int = 1) -> ProgStats:
    return ProgStats(prog_id=pid, prog_type=kind, run_time_ns=10, run_cnt=1)


@pytest.mark.parametrize(
    ("perf_events", "progs", "attached"),
    [
        (0, (), False),  # nothing loaded yet
        (2, (_prog(PROG_TYPE_TRACEPOINT, 1), _prog(PROG_TYPE_TRACEPOINT, 2)), False),
        (2, (_prog(PROG_TYPE_TRACEPOINT), _prog(PROG_TYPE_PERF_EVENT, 2)), False),
        (3, (_prog(PROG_TYPE_TRACEPOINT), _prog(PROG_TYPE_PERF_EVENT, 2)), True),
        (2, (_prog(PROG_TYPE_PERF_EVENT),), True),  # profile-bpfcc on 2 CPUs
        (1, (_prog(PROG_TYPE_PERF_EVENT),), False),  # one CPU still to go
    ],
)
def test_attached_once_every_cpu_has_its_event(
    perf_events: int, progs: tuple[ProgStats, ...], attached: bool
) -> None:
    assert FdSnapshot(perf_events, progs).attached(ncpus=2) is attached


def _trial(mode: str, rep: int, cpu: float) -> Trial:
    return Trial(mode, rep, load1=0.0, workload_cpu_s=cpu, workload_wall_s=cpu)


def test_slowdown_pairs_each_run_with_the_alone_run_of_its_repetition() -> None:
    trials = [
        _trial("alone", 0, 10.0),
        _trial("bpfprof", 0, 10.1),
        _trial("alone", 1, 20.0),  # a slow repetition: the host was busy
        _trial("bpfprof", 1, 20.4),
        _trial("bpfprof", 2, 5.0),  # its alone run is missing: left out
    ]
    s = slowdown(trials, "bpfprof", lambda t: t.workload_cpu_s)
    assert s is not None
    assert (s.low, s.high, s.n) == (pytest.approx(1.01), pytest.approx(1.02), 2)
