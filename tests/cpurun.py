"""Sampling a program with the CPU source from its start to its exit, as
the record runner does: the shared loop of the CFI walker's BPF tests."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import SourceOptions
from agent.model import RawSample
from agent.sources.cpu import CpuSource
from symbolizer import Symbolizer


@dataclass
class Sampled:
    samples: list[RawSample]
    counters: dict[str, int]
    unwinding: bool  # whether user stacks were walked with CFI


def sample_until_exit(
    proc: subprocess.Popen[str],
    options: SourceOptions,
    cache_dir: Path,
    symbolizer: Symbolizer,
    seconds: float,
) -> Sampled:
    """Start a CPU source on `proc`, send it the line it waits for to
    begin, and sample it until it exits (or `seconds` pass), new processes
    going to `symbolizer` as they are seen."""
    assert proc.stdin is not None
    source = CpuSource(options, cache_dir=cache_dir)
    source.add_targets([proc.pid])
    source.start()
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        samples: list[RawSample] = []
        end = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < end:
            source.poll(100, symbolizer.observe)
            samples += source.drain()
        samples += source.drain() + source.drain()
        return Sampled(samples, source.counters(), source.unwinding)
    finally:
        source.close()
