"""Turn trials into medians, paired slowdown ratios and goal verdicts.

Slowdowns are paired: each profiled run is divided by the alone run of the
same repetition, so drift in the host's load (it is shared) cancels as far
as it can before the median is taken.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.trial import Trial

ALONE, BPFPROF, BCC = "alone", "bpfprof", "profile-bpfcc"
ATTACH_GOAL_S = 0.8
RSS_GOAL_MIB = 150.0
CPU_GOAL_PERCENT = 1.0  # "near zero": under 1% of one CPU while recording


@dataclass(frozen=True)
class Spread:
    """Median with the smallest and largest value over the repetitions."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        m, lo, hi = (v * scale for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measured: str
    passed: bool


def spread(values: Iterable[float | None]) -> Spread | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def by_mode(trials: list[Trial], mode: str) -> list[Trial]:
    return [t for t in trials if t.mode == mode]


def metric(trials: list[Trial], mode: str, get: Callable[[Trial], float | None]) -> Spread | None:
    return spread(get(t) for t in by_mode(trials, mode))


def slowdown(trials: list[Trial], mode: str, get: Callable[[Trial], float]) -> Spread | None:
    """Per-repetition ratio of a profiled run to the alone run of that repetition."""
    alone = {t.rep: get(t) for t in by_mode(trials, ALONE)}
    return spread(get(t) / alone[t.rep] for t in by_mode(trials, mode) if alone.get(t.rep))


def goals(trials: list[Trial]) -> list[Goal]:
    """The issue's goals for `bpfprof record -t cpu`, judged on these trials.

    Each is (name, measured value, its unit, the limit, how the limit is
    stated); a goal whose value was not measured is left out.
    """
    attach = metric(trials, BPFPROF, lambda t: t.attach_s)
    attach_cpu = metric(trials, BPFPROF, lambda t: t.attach_cpu_s)
    rss = metric(trials, BPFPROF, lambda t: t.rss_mib)
    ours = metric(trials, BPFPROF, lambda t: t.bpf_ns_per_sample)
    theirs = metric(trials, BCC, lambda t: t.bpf_ns_per_sample)
    cpu = metric(trials, BPFPROF, lambda t: t.tool_cpu_percent)
    bcc_us = theirs.median / 1000 if theirs else None
    table = [
        (
            "time to attach",
            attach.median if attach else None,
            "s (median)",
            ATTACH_GOAL_S,
            "<= {} s",
        ),
        # The wall time above grows with the host's load; the CPU the start
        # takes does not, and is what an idle host's wall time would be.
        (
            "CPU used until attached",
            attach_cpu.median if attach_cpu else None,
            "s (median)",
            ATTACH_GOAL_S,
            "<= {} s",
        ),
        ("peak RSS", rss.high if rss else None, "MiB (max)", RSS_GOAL_MIB, "<= {:.0f} MiB"),
        (
            "BPF time per sample",
            ours.median / 1000 if ours else None,
            "µs (median)",
            bcc_us,
            "<= profile-bpfcc's {:.2f} µs",
        ),
        (
            "user-space CPU while recording",
            cpu.median if cpu else None,
            "% of a CPU (median)",
            CPU_GOAL_PERCENT,
            "near zero: <= {}% of a CPU",
        ),
    ]
    return [
        Goal(name, target.format(limit), f"{value:.2f} {unit}", value <= limit)
        for name, value, unit, limit, target in table
        if value is not None and limit is not None
    ]
