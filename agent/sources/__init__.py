"""Sample sources, one per profile type; agent/sources/registry.py says which.

Creating a source is cheap and needs no privileges: its program is
compiled at start(), by BCC in a short-lived loader child (bcc_loader.py);
no module of the agent process imports `bcc`.
"""

from __future__ import annotations

from agent.config import SourceOptions
from agent.sources.base import SampleSource


def create_source(
    profile_type: str, options: SourceOptions, command: tuple[str, ...] = ()
) -> SampleSource:
    """The SampleSource for a profile type. `command` is the COMMAND a held
    child will exec, which the allocation source must probe before it runs."""
    from agent.sources import registry

    return registry.get(profile_type).source(options, command)


def render_program(profile_type: str, options: SourceOptions) -> str:
    """The exact BPF program a profile type would compile with these
    options, its flags shown as #defines (`bpfprof check --print-bpf`)."""
    from agent.sources import registry
    from agent.sources.program import ProgramSource

    entry = registry.get(profile_type)
    if entry.program is not None:
        return entry.program(options)
    source = entry.source(options, ())
    assert isinstance(source, ProgramSource)
    return source.render()
