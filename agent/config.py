"""Configuration as frozen dataclasses, validated in one place.

The CLI only builds these; every stage reads them and nothing else.
"""

from __future__ import annotations

import math
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import UsageError

DEFAULT_ALLOC_RATE = 512 * 1024  # bytes between allocation samples, on average
OUTPUT_FORMATS = ("pprof", "folded", "otlp")
UNWIND_MODES = ("dwarf", "fp")


@dataclass(frozen=True)
class BpfLimits:
    """Sizes of the in-kernel maps (each exists twice: double buffering)."""

    max_entries: int = 16384  # distinct (thread, stack) keys per window
    stack_entries: int = 16384  # stack-map buckets per window
    target_entries: int = 8192  # followed processes with --pid / COMMAND
    seen_entries: int = 16384  # processes remembered as already seen
    event_pages: int = 64  # ring-buffer pages for new-process events
    unwind_rows: int = 1 << 20  # CFI rows of all binaries (16 bytes of kernel memory each)
    unwind_mappings: int = 65536  # executable mappings of all processes (32 bytes each)


# `run`'s table_wait_s: an interval is late by a second at most for a big
# binary's table (libLLVM's takes ~5 s to build), not by the whole build
RUN_TABLE_WAIT_S = 1.0


@dataclass(frozen=True)
class SourceOptions:
    """What a sample source needs to know, whoever drives it (record or run)."""

    frequency: int = 99
    filter_pids: bool = False  # count only the target processes
    follow_forks: bool = False  # add the targets' children as they are forked
    limits: BpfLimits = field(default_factory=BpfLimits)
    unwind: str = "dwarf"  # user stacks: "dwarf" (CFI, frame pointers as fallback) or "fp"
    min_block_us: int = 0  # offcpu: ignore shorter blocks
    min_wait_us: int = 0  # lock: ignore shorter waits
    wait_sampling: int = 16  # offcpu, lock: at most 1 in N short waits takes stacks
    alloc_rate: int = DEFAULT_ALLOC_RATE  # alloc: mean bytes between samples
    all_processes: bool = False  # alloc: probe the system's libc for every process
    alloc_inuse: bool = True  # alloc: also probe free, for inuse_*
    prewarm: tuple[str, ...] = ()  # executables whose unwind tables are built before start
    python: bool = True  # with unwind "dwarf": CPython processes' Python frames (bpf/python.h)
    # how long a drain waits, in all, for the tables of big binaries being
    # built (agent/unwind/loader.py) before it walks raw stacks without them
    table_wait_s: float = 60.0


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
    unwind: str = "dwarf"
    min_block_us: int = 0
    min_wait_us: int = 0
    wait_sampling: int = 16
    alloc_rate: int = DEFAULT_ALLOC_RATE
    all_processes: bool = False
    alloc_inuse: bool = True
    python: bool = True  # Python frames of CPython processes (with unwind "dwarf")

    def __post_init__(self) -> None:
        from agent import registry  # it imports this module

        if self.profile_type not in registry.TYPES:
            raise UsageError(
                f"profile type {self.profile_type!r} is not supported yet "
                f"(supported: {', '.join(registry.TYPES)})"
            )
        if self.pids and self.command:
            raise UsageError("give either --pid or a COMMAND, not both")
        if self.unwind not in UNWIND_MODES:
            modes = ", ".join(UNWIND_MODES)
            raise UsageError(f"--unwind must be one of {modes}, not {self.unwind!r}")
        if self.duration is not None and not (0 < self.duration < math.inf):
            raise UsageError(f"--duration must be positive and finite, not {self.duration}")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(
                f"unknown output format {self.output_format!r} (known: {', '.join(OUTPUT_FORMATS)})"
            )
        for pid in self.pids:
            if pid <= 0:
                raise UsageError(f"--pid must be a positive process id, not {pid}")
        self._check_profile_options()

    def _check_profile_options(self) -> None:
        """Every type's settings within the registry's bounds (click checks
        most of them first; this is for callers that build a RecordConfig),
        and a target for a type that would cost every process on the host."""
        from agent import registry

        for s in registry.record_settings():
            value = getattr(self, s.field, None)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            name = s.flag.split("/")[-1]
            if s.low == 0 and value < 0:
                raise UsageError(f"{name} must not be negative, not {value}")
            if (s.low is not None and value < s.low) or (s.high is not None and value > s.high):
                raise UsageError(
                    f"{name} must be between {s.low} and {s.high}{s.unit}, not {value}"
                )
        targeted = bool(self.pids or self.command)
        host_wide = registry.get(self.profile_type).host_wide
        if host_wide and not targeted and not self.all_processes:
            raise UsageError(host_wide)
        if self.all_processes and targeted:
            raise UsageError("give --all-processes or a target (--pid, COMMAND), not both")

    def source_options(self) -> SourceOptions:
        return SourceOptions(
            frequency=self.frequency,
            filter_pids=bool(self.pids or self.command),
            follow_forks=bool(self.command),
            limits=self.limits,
            unwind=self.unwind,
            min_block_us=self.min_block_us,
            min_wait_us=self.min_wait_us,
            wait_sampling=self.wait_sampling,
            alloc_rate=self.alloc_rate,
            all_processes=self.all_processes,
            alloc_inuse=self.alloc_inuse,
            prewarm=self._command_executable(),
            python=self.python,
        )

    def _command_executable(self) -> tuple[str, ...]:
        path = shutil.which(self.command[0]) if self.command else None
        return (path,) if path else ()


def format_from_suffix(path: Path) -> str:
    """The output format a file name implies, by suffix (README.md, "Using it")."""
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


def parse_key_values(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values, as OTEL_EXPORTER_OTLP_HEADERS
    and OTEL_RESOURCE_ATTRIBUTES are written (the W3C baggage format)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs separated by commas, not {item!r}")
        out[key.strip()] = urllib.parse.unquote(value.strip())
    return out
