"""Our Profile as OpenTelemetry profiles (`profiles.v1development`).

One request holds every profile of one interval: one ResourceProfiles per
process (its resource attributes follow the semantic conventions), each with
one ScopeProfiles naming bpfprof, and one OTLP Profile per sample type: an
OTLP Profile carries exactly one `sample_type`, so a CPU profile (samples
and cpu time) becomes two profiles sharing stacks through the dictionary.
Thread id and name are sample attributes (`thread.id`, `thread.name`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from agent.exporters.otlp_dict import Dictionary, Value
from agent.model import Profile, Sample

SCOPE_NAME = "bpfprof"
Attributes = tuple[tuple[str, Value], ...]
# Sample labels that describe the process: they go on the resource instead.
PROCESS_LABELS = ("pid", "process", "container_id")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bpfprof")
    except Exception:  # not installed (running from a source tree)
        return "0"


@dataclass
class _Group:
    attributes: Attributes
    profiles: list[pb.Profile]


class RequestBuilder:
    """Collects profiles of one interval into one request, one dictionary."""

    def __init__(self, scope_version: str | None = None) -> None:
        self.dictionary = Dictionary()
        self._groups: dict[Attributes, _Group] = {}
        self._scope_version = scope_version if scope_version is not None else _version()

    def add(self, profile: Profile, resource_of: Callable[[Sample], Attributes]) -> None:
        """Split `profile` by resource (usually: by process) and add it."""
        by_resource: dict[Attributes, list[Sample]] = {}
        for s in profile.samples:
            by_resource.setdefault(resource_of(s), []).append(s)
        for attrs, samples in by_resource.items():
            group = self._groups.setdefault(attrs, _Group(attrs, []))
            group.profiles.extend(self._profiles(profile, samples))

    def _profiles(self, profile: Profile, samples: list[Sample]) -> Iterable[pb.Profile]:
        d = self.dictionary
        stacks = [d.stack(s.locations) for s in samples]
        attrs = [self._sample_attributes(s) for s in samples]
        period_type = profile.period_type
        for i, st in enumerate(profile.sample_types):
            out = pb.Profile(
                sample_type=pb.ValueType(
                    type_strindex=d.string(st.type), unit_strindex=d.string(st.unit)
                ),
                time_unix_nano=profile.time_nanos,
                duration_nano=profile.duration_nanos,
                period=profile.period,
                profile_id=os.urandom(16),
            )
            if period_type is not None:
                out.period_type.type_strindex = d.string(period_type.type)
                out.period_type.unit_strindex = d.string(period_type.unit)
            for s, stack, a in zip(samples, stacks, attrs, strict=True):
                if s.values[i]:
                    out.samples.add(stack_index=stack, attribute_indices=a, values=[s.values[i]])
            yield out

    def _sample_attributes(self, s: Sample) -> list[int]:
        d = self.dictionary
        out = []
        if "tid" in s.num_labels:
            out.append(d.attribute("thread.id", s.num_labels["tid"]))
        if "comm" in s.labels:
            out.append(d.attribute("thread.name", s.labels["comm"]))
        for k, v in sorted(s.labels.items()):
            if k not in ("comm", *PROCESS_LABELS):
                out.append(d.attribute(k, v))
        for k, n in sorted(s.num_labels.items()):
            if k not in ("tid", *PROCESS_LABELS):
                out.append(d.attribute(k, n))
        return out

    def resource_profiles(self) -> list[pb.ResourceProfiles]:
        out = []
        for group in self._groups.values():
            rp = pb.ResourceProfiles()
            for k, v in group.attributes:
                kv = rp.resource.attributes.add(key=k)
                if isinstance(v, int):
                    kv.value.int_value = v
                else:
                    kv.value.string_value = v
            sp = rp.scope_profiles.add()
            sp.scope.name = SCOPE_NAME
            sp.scope.version = self._scope_version
            sp.profiles.extend(group.profiles)
            out.append(rp)
        return out

    def request(self) -> svc.ExportProfilesServiceRequest:
        return svc.ExportProfilesServiceRequest(
            resource_profiles=self.resource_profiles(), dictionary=self.dictionary.pb
        )

    def profiles_data(self) -> pb.ProfilesData:
        return pb.ProfilesData(
            resource_profiles=self.resource_profiles(), dictionary=self.dictionary.pb
        )


def resource_from_labels(host_name: str) -> Callable[[Sample], Attributes]:
    """Resources for a profile that carries only sample labels (`record`)."""

    def resource_of(s: Sample) -> Attributes:
        name = s.labels.get("process") or s.labels.get("comm", "")
        attrs: list[tuple[str, Value]] = [("host.name", host_name), ("service.name", name)]
        if "pid" in s.num_labels:
            attrs.append(("process.pid", s.num_labels["pid"]))
        attrs.append(("process.executable.name", name))
        if s.labels.get("container_id"):
            attrs.append(("container.id", s.labels["container_id"]))
        return tuple(attrs)

    return resource_of


def encode(
    profile: Profile,
    host_name: str | None = None,
    resource: Callable[[Sample], Attributes] | None = None,
) -> bytes:
    """A ProfilesData message (the `.otlp.pb` file format) for one profile;
    `resource` gives each sample's resource, else it is made from its labels."""
    import socket

    builder = RequestBuilder()
    builder.add(profile, resource or resource_from_labels(host_name or socket.gethostname()))
    data: bytes = builder.profiles_data().SerializeToString()
    return data
