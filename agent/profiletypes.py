"""The profile types the continuous agent can run, in one table.

`bpfprof run` enables types per config section (`[profiles.cpu]`,
`[profiles.offcpu]`, ...). Each available type is one `ProfileType` entry
here: the keys its section accepts, how to build its sample source and its
ProfileSpec. Adding a type is adding one entry; the config validator and the
runner read this table and nothing else. Sources are imported lazily so the
config can be validated (and `bpfprof status` run) without BCC. Sources
and specs come from agent.sources.create_source and agent.builder.spec_for,
shared with `bpfprof record`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.builder import ProfileSpec, spec_for
from agent.config import BpfLimits, SourceOptions
from agent.sources.base import SampleSource

# A setting a type's section accepts: (kind, default, lowest, highest); kinds
# are agent/configschema.py's ("int", "bool", "size", ...).
Setting = tuple[str, Any, float | None, float | None]


@dataclass(frozen=True)
class ProfileType:
    """How to run one profile type in the agent: the settings its config
    section accepts and how they become SourceOptions."""

    name: str
    settings: Mapping[str, Setting]
    enabled_by_default: bool
    options: Callable[[Mapping[str, Any], BpfLimits], SourceOptions]

    def make_source(self, settings: Mapping[str, Any], limits: BpfLimits) -> SampleSource:
        from agent.sources import create_source

        return create_source(self.name, self.options(settings, limits))

    def make_spec(self, settings: Mapping[str, Any], limits: BpfLimits) -> ProfileSpec:
        return spec_for(self.name, self.options(settings, limits))


def _options(**fixed: Any) -> Callable[[Mapping[str, Any], BpfLimits], SourceOptions]:
    """SourceOptions from a section: keys named like SourceOptions fields pass
    through; `rename` maps the config's friendlier names."""
    rename = {"rate": "alloc_rate", "inuse": "alloc_inuse", "sampling": "wait_sampling"}

    def build(settings: Mapping[str, Any], limits: BpfLimits) -> SourceOptions:
        given = {rename.get(k, k): v for k, v in settings.items()}
        return SourceOptions(limits=limits, **fixed, **given)

    return build


# offcpu, lock: at most 1 in N short waits takes stacks (bpf/waits.h).
SAMPLING = ("int", SourceOptions.wait_sampling, 1, 1 << 20)

TYPES: dict[str, ProfileType] = {
    "cpu": ProfileType(
        name="cpu",
        # 19 Hz: a prime, so sampling does not lock step with periodic work,
        # and low enough for a host-wide agent to stay well under 1% of a core.
        settings={"frequency": ("int", 19, 1, 10000)},
        enabled_by_default=True,
        options=_options(),
    ),
    "offcpu": ProfileType(
        name="offcpu",
        # Host-wide, most blocks are short waits of idle daemons: 1 ms keeps
        # the ones a user asks about ("why is this request slow").
        settings={"min_block_us": ("int", 1000, 0, 10**9), "sampling": SAMPLING},
        enabled_by_default=False,
        options=_options(),
    ),
    "lock": ProfileType(
        name="lock",
        settings={"min_wait_us": ("int", 10, 0, 10**9), "sampling": SAMPLING},
        enabled_by_default=False,
        options=_options(),
    ),
    "alloc": ProfileType(
        name="alloc",
        # Host-wide allocation probes cost every process something: opt-in,
        # and sparse by default (one sample per 4 MiB allocated on average).
        settings={"rate": ("size", 4 << 20, 1, 1 << 40), "inuse": ("bool", True, None, None)},
        enabled_by_default=False,
        options=_options(all_processes=True),
    ),
}
