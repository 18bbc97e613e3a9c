"""The profile types the continuous agent can run, in one table.

`bpfprof run` enables types per config section (`[profiles.cpu]`,
`[profiles.offcpu]`, ...). Each available type is one `ProfileType` entry
here: the keys its section accepts, how to build its sample source and its
ProfileSpec. Adding a type is adding one entry; the config validator and the
runner read this table and nothing else. Sources are imported lazily so the
config can be validated (and `bpfprof status` run) without BCC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.builder import ProfileSpec, cpu_spec
from agent.config import BpfLimits, SourceOptions
from agent.sources.base import SampleSource

# A setting a type's section accepts: (python type, default, lowest, highest).
Setting = tuple[type, Any, float | None, float | None]

# Types the contract names that are not available in this build yet: enabling
# one is a config error that says so, rather than "unknown key".
PLANNED = ("offcpu", "alloc", "lock")


@dataclass(frozen=True)
class ProfileType:
    """How to run one profile type: its settings, source and spec."""

    name: str
    settings: Mapping[str, Setting]
    enabled_by_default: bool
    make_source: Callable[[Mapping[str, Any], BpfLimits], SampleSource]
    make_spec: Callable[[Mapping[str, Any]], ProfileSpec]


def _cpu_source(settings: Mapping[str, Any], limits: BpfLimits) -> SampleSource:
    from agent.sources.cpu import CpuSource

    return CpuSource(SourceOptions(frequency=int(settings["frequency"]), limits=limits))


def _cpu_spec(settings: Mapping[str, Any]) -> ProfileSpec:
    return cpu_spec(int(settings["frequency"]))


TYPES: dict[str, ProfileType] = {
    "cpu": ProfileType(
        name="cpu",
        # 19 Hz: a prime, so sampling does not lock step with periodic work,
        # and low enough for a host-wide agent to stay under 1% of a core.
        settings={"frequency": (int, 19, 1, 10000)},
        enabled_by_default=True,
        make_source=_cpu_source,
        make_spec=_cpu_spec,
    ),
}
