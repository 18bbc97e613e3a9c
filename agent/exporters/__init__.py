"""Encoders: pure functions of one validated Profile, one per output format.

`encode(profile, fmt)` is the one table of them: `bpfprof record -o`, the
conversions of `bpfprof report` and the agent's rolling files all go through
it. OTLP's resource attributes describe processes, which a Profile knows only
by its labels: a driver that keeps process facts passes `resource`
(pipeline/core.py); without it they are made from the labels.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import UsageError
from agent.model import Profile, Sample

ResourceOf = Callable[[Sample], tuple[tuple[str, str | int], ...]]
FORMATS = ("pprof", "folded", "otlp")


def encode(profile: Profile, fmt: str, resource: ResourceOf | None = None) -> bytes:
    """`profile` in format `fmt` (one of FORMATS)."""
    if fmt == "pprof":
        from agent.exporters import pprof

        return pprof.encode(profile)
    if fmt == "folded":
        from agent.exporters import folded

        # Folded stacks carry one number: the first sample type (for CPU, the
        # sample count), which is what flame graph tools expect.
        return folded.encode(profile, sample_index=0).encode()
    if fmt == "otlp":
        from agent.exporters import otlp

        return otlp.encode(profile, resource=resource)  # an OTLP ProfilesData message
    raise UsageError(f"unknown output format {fmt!r}")
