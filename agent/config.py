"""Configuration as frozen dataclasses, validated in one place.

The CLI only builds these; every stage reads them and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import UsageError

PROFILE_TYPES = ("cpu",)
OUTPUT_FORMATS = ("pprof", "folded", "otlp")


@dataclass(frozen=True)
class BpfLimits:
    """Sizes of the in-kernel maps (each exists twice: double buffering)."""

    max_entries: int = 16384  # distinct (thread, stack) keys per window
    stack_entries: int = 16384  # stack-map buckets per window
    target_entries: int = 8192  # followed processes with --pid / COMMAND
    seen_entries: int = 16384  # processes remembered as already seen
    event_pages: int = 64  # ring-buffer pages for new-process events


@dataclass(frozen=True)
class SourceOptions:
    """What a sample source needs to know, whoever drives it (record or run)."""

    frequency: int = 99
    filter_pids: bool = False  # count only the target processes
    follow_forks: bool = False  # add the targets' children as they are forked
    limits: BpfLimits = field(default_factory=BpfLimits)


@dataclass(frozen=True)
class RecordConfig:
    """One `bpfprof record` run."""

    profile_type: str = "cpu"
    pids: tuple[int, ...] = ()
    command: tuple[str, ...] = ()
    duration: float | None = None
    frequency: int = 99
    output: Path = Path("profile.pb.gz")
    output_format: str = "pprof"
    window: float = 5.0  # seconds between drains of the kernel maps
    limits: BpfLimits = field(default_factory=BpfLimits)

    def __post_init__(self) -> None:
        if self.profile_type not in PROFILE_TYPES:
            raise UsageError(
                f"profile type {self.profile_type!r} is not supported yet "
                f"(supported: {', '.join(PROFILE_TYPES)})"
            )
        if self.pids and self.command:
            raise UsageError("give either --pid or a COMMAND, not both")
        if not 1 <= self.frequency <= 10000:
            raise UsageError(f"--frequency must be between 1 and 10000 Hz, not {self.frequency}")
        if self.duration is not None and self.duration <= 0:
            raise UsageError(f"--duration must be positive, not {self.duration}")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(
                f"unknown output format {self.output_format!r} (known: {', '.join(OUTPUT_FORMATS)})"
            )
        for pid in self.pids:
            if pid <= 0:
                raise UsageError(f"--pid must be a positive process id, not {pid}")

    @property
    def period_nanos(self) -> int:
        return 1_000_000_000 // self.frequency

    def source_options(self) -> SourceOptions:
        return SourceOptions(
            frequency=self.frequency,
            filter_pids=bool(self.pids or self.command),
            follow_forks=bool(self.command),
            limits=self.limits,
        )


def format_from_suffix(path: Path) -> str:
    """The output format a file name implies (CONTRACT: by suffix)."""
    name = path.name
    if name.endswith(".otlp.pb"):
        return "otlp"
    if name.endswith((".pb.gz", ".pprof", ".pb")):
        return "pprof"
    if name.endswith((".folded", ".txt")):
        return "folded"
    raise UsageError(
        f"cannot tell the output format from {name!r}: use a .pb.gz, .pprof, .folded, "
        ".txt or .otlp.pb name, or --format"
    )
