"""Build one validated Profile from aggregated samples.

The builder knows each profile type's sample types and period (README.md,
"The profiles"; docs/profiles.md), turns raw kernel values into them, resolves stacks and
attaches the labels every sample carries: pid, tid, comm, process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.errors import InvalidProfile
from agent.model import Location, Profile, RawKey, RawSample, Sample, ValueType
from agent.pipeline.resolve import StackResolver

# Extra labels for a sample from its key and resolved stack; None drops it.
Labeler = Callable[[RawKey, tuple[Location, ...]], dict[str, str] | None]

log = logging.getLogger("bpfprof.builder")


@dataclass(frozen=True)
class ProfileSpec:
    """What a profile type's samples mean."""

    sample_types: tuple[ValueType, ...]
    period_type: ValueType | None
    period: int
    default_sample_type: str
    values: Callable[[tuple[int, ...]], tuple[int, ...]]
    labels: Labeler | None = None


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


def offcpu_spec() -> ProfileSpec:
    """Off-CPU: the kernel sums blocked nanoseconds per stack."""
    return ProfileSpec(
        sample_types=(ValueType("offcpu", "nanoseconds"),),
        period_type=None,
        period=0,
        default_sample_type="offcpu",
        values=lambda raw: (raw[0],),
    )


def lock_spec(labels: Labeler) -> ProfileSpec:
    """Lock: (contentions, delay) per stack, labelled with the kind of lock by
    `labels` (the lock source's classifier, which leaves out condition-variable
    and unidentified waits: they are not contention)."""
    return ProfileSpec(
        sample_types=(ValueType("contentions", "count"), ValueType("delay", "nanoseconds")),
        period_type=ValueType("contentions", "count"),
        period=1,
        default_sample_type="delay",
        values=lambda raw: (raw[0], raw[1]),
        labels=labels,
    )


def alloc_spec(rate: int) -> ProfileSpec:
    """Allocations: the source already scaled each sample to an unbiased
    estimate (agent/sources/sampling.py), so values pass through."""
    return ProfileSpec(
        sample_types=(
            ValueType("alloc_objects", "count"),
            ValueType("alloc_space", "bytes"),
            ValueType("inuse_objects", "count"),
            ValueType("inuse_space", "bytes"),
        ),
        period_type=ValueType("space", "bytes"),
        period=rate,
        default_sample_type="inuse_space",
        values=lambda raw: raw,
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
        locations = resolver.locations(key)
        if spec.labels is not None:
            extra = spec.labels(key, locations)
            if extra is None:
                continue
            labels.update(extra)
        out.append(
            Sample(
                locations=locations,
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
    try:
        profile.validate()
    except InvalidProfile as e:
        # One bad sample must not cost the whole profile (the continuous
        # agent would lose an interval): keep the samples that are valid.
        profile.samples = [s for s in out if _valid(s, profile)]
        log.warning(
            "dropped %d samples that broke the profile model: %s",
            len(out) - len(profile.samples),
            e,
        )
        profile.validate()
    return profile


def _valid(sample: Sample, profile: Profile) -> bool:
    alone = Profile(sample_types=profile.sample_types, samples=[sample])
    try:
        alone.validate()
    except InvalidProfile:
        return False
    return True
