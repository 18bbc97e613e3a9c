"""Build one validated Profile from aggregated samples.

The builder knows each profile type's sample types and period (CONTRACT.md,
"pprof conventions"), turns raw kernel values into them, resolves stacks and
attaches the labels every sample carries: pid, tid, comm, process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.model import Profile, RawKey, RawSample, Sample, ValueType
from agent.resolve import StackResolver


@dataclass(frozen=True)
class ProfileSpec:
    """What a profile type's samples mean."""

    sample_types: tuple[ValueType, ...]
    period_type: ValueType | None
    period: int
    default_sample_type: str
    values: Callable[[tuple[int, ...]], tuple[int, ...]]


def cpu_spec(frequency: int) -> ProfileSpec:
    """CPU: each kernel count is one sample worth one period of CPU time."""
    period = 1_000_000_000 // frequency
    return ProfileSpec(
        sample_types=(ValueType("samples", "count"), ValueType("cpu", "nanoseconds")),
        period_type=ValueType("cpu", "nanoseconds"),
        period=period,
        default_sample_type="cpu",
        values=lambda raw: (raw[0], raw[0] * period),
    )


def build_profile(
    samples: Iterable[RawSample],
    spec: ProfileSpec,
    resolver: StackResolver,
    process_name: Callable[[RawKey], str],
    *,
    time_nanos: int,
    duration_nanos: int,
    comments: tuple[str, ...] = (),
    container_id: Callable[[int], str] | None = None,
) -> Profile:
    out = []
    for raw in samples:
        key = raw.key
        labels = {"comm": key.comm, "process": process_name(key) or key.comm}
        cid = container_id(key.pid) if container_id else ""
        if cid:
            labels["container_id"] = cid
        out.append(
            Sample(
                locations=resolver.locations(key),
                values=spec.values(raw.values),
                labels=labels,
                num_labels={"pid": key.pid, "tid": key.tid},
            )
        )
    profile = Profile(
        sample_types=spec.sample_types,
        samples=out,
        period_type=spec.period_type,
        period=spec.period,
        time_nanos=time_nanos,
        duration_nanos=duration_nanos,
        default_sample_type=spec.default_sample_type,
        comments=comments,
    )
    profile.validate()
    return profile
