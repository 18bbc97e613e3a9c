"""Sample sources, one per profile type; `create_source` picks one.

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
    if profile_type == "cpu":
        from agent.sources.cpu import CpuSource

        return CpuSource(options)
    if profile_type == "offcpu":
        from agent.sources.offcpu import OffCpuSource

        return OffCpuSource(options)
    if profile_type == "lock":
        from agent.sources.lock import LockSource

        return LockSource(options)
    if profile_type == "alloc":
        from agent.sources.alloc import AllocSource

        return AllocSource(options, command)
    raise ValueError(f"unknown profile type {profile_type!r}")


def render_program(profile_type: str, options: SourceOptions) -> str:
    """The exact BPF program a profile type would compile with these
    options, its flags shown as #defines (`bpfprof check --print-bpf`)."""
    if profile_type == "alloc":
        from agent.sources import bcc_loader
        from agent.sources.alloc import PROGRAM, alloc_cflags

        return bcc_loader.render(PROGRAM, alloc_cflags(options))
    from agent.sources.program import ProgramSource

    source = create_source(profile_type, options)
    assert isinstance(source, ProgramSource)
    return source.render()
