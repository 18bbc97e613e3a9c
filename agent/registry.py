"""The profile types, one entry each: the only place a type is described.

An entry says everything the rest of the agent needs to know about a type:
the settings it takes (their `[profiles.TYPE]` config key, `bpfprof record`
flag, bounds and help), how to build its sample source and its ProfileSpec,
and what each of its self-metric counters means and which option raises the
limit behind it. The CLI (`-t` choices, per-type flags and their bounds),
RecordConfig's checks, the config schema and both drivers (`record`, `run`)
read this table, so adding a type is adding one entry (`register`).

Sources and specs are imported lazily, inside the factories: the CLI reads
this table as it starts, and the config can be validated (and `bpfprof
status` run) without loading a source module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import RUN_TABLE_WAIT_S, BpfLimits, SourceOptions

if TYPE_CHECKING:  # the CLI reads this table to build its options: stay light
    from agent.pipeline.builder import ProfileSpec
    from agent.sources.base import SampleSource

SourceFactory = Callable[[SourceOptions, tuple[str, ...]], "SampleSource"]

# What runner.account adds a counter's delta to (the status file's names).
LOST_SAMPLES, LOST_STACKS, LOST_EVENTS = "lost_samples", "lost_stacks", "lost_events"
LOSS_KINDS = (LOST_SAMPLES, LOST_STACKS, LOST_EVENTS)


@dataclass(frozen=True)
class Setting:
    """One option of a type. `key` is its name under `[profiles.TYPE]` in
    `bpfprof run`'s config ("" when run fixes it), `field` the SourceOptions
    (and RecordConfig) field it sets, `flag` its `bpfprof record` flag (""
    when record has none). `default` is the agent's: a host-wide, always-on
    profile wants sparser settings than a one-off recording, whose default
    is the RecordConfig field's."""

    key: str
    field: str
    kind: str  # agent/daemon/configschema.py's kinds: "int", "size", "bool"
    default: Any
    low: int | None = None
    high: int | None = None
    flag: str = ""
    help: str = ""
    unit: str = ""  # for record's range error ("Hz", "bytes")
    invert: bool = False  # the flag turns the setting off (--no-inuse)
    click_range: bool = True  # False: record checks the range itself (-F)


@dataclass(frozen=True)
class Limit:
    """A kernel map size every type shares: its `bpfprof run` config key,
    the BpfLimits field it sets, its `bpfprof record` flag, bounds and help."""

    key: str
    field: str
    flag: str
    low: int
    high: int
    help: str

    @property
    def default(self) -> int:
        value: int = getattr(BpfLimits(), self.field)
        return value


LIMITS = (
    Limit(
        "limits.max_entries",
        "max_entries",
        "--max-entries",
        128,
        1 << 22,
        "Distinct (thread, stack) entries the kernel counts per window.",
    ),
    Limit(
        "limits.stack_storage_size",
        "stack_entries",
        "--stack-storage-size",
        128,
        1 << 22,
        "Stack-map buckets per window (off-CPU, lock: per stack generation); "
        "raise it when stacks are lost to collisions.",
    ),
    Limit(
        "limits.unwind_rows",
        "unwind_rows",
        "--unwind-rows",
        1024,
        1 << 26,
        "CFI rows the kernel holds for all binaries (16 bytes of kernel memory each).",
    ),
)


@dataclass(frozen=True)
class CounterMeaning:
    """A self-metric counter a source reports: what a non-zero value means
    (record's warning), what it adds to in run's status (`account`: one of
    LOST_*, or "" for none), and the flag and config key that raise the
    limit behind it, with the BpfLimits field whose value the warning shows."""

    name: str
    text: str
    account: str = ""
    flag: str = ""
    setting: str = ""
    limit: str = ""

    def warning(self, limits: BpfLimits) -> str:
        """The text of record's warning: what was lost and what to raise."""
        now = getattr(limits, self.limit) if self.limit else None
        if self.flag and now is not None:
            return f"{self.text} (raise {self.flag}, now {now})"
        if self.flag:
            return f"{self.text} (raise {self.flag})"
        if now is not None:
            return f"{self.text} ({now})"
        return self.text


@dataclass(frozen=True)
class ProfileType:
    """One profile type: settings, source, spec, counters."""

    name: str
    settings: tuple[Setting, ...]
    source: SourceFactory
    spec: Callable[[SourceOptions], ProfileSpec]
    counters: tuple[CounterMeaning, ...]
    enabled_by_default: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)  # run's SourceOptions it fixes
    program: Callable[[SourceOptions], str] | None = None  # check --print-bpf; None: the source's
    # What recording every process costs the host, for a type that costs
    # every process something: record then needs a target or --all-processes
    # (`host_wide`, the refusal) and warns when given it (`host_wide_cost`).
    host_wide: str = ""
    host_wide_cost: str = ""

    def options(
        self, settings: Mapping[str, Any], limits: BpfLimits, python: bool = True
    ) -> SourceOptions:
        """`bpfprof run`'s SourceOptions from this type's config section
        (`python`: the config's python_frames)."""
        fields = {s.key: s.field for s in self.settings if s.key}
        given = {fields.get(k, k): v for k, v in settings.items()}
        return SourceOptions(
            limits=limits, python=python, table_wait_s=RUN_TABLE_WAIT_S, **self.fixed, **given
        )

    def make_source(
        self, settings: Mapping[str, Any], limits: BpfLimits, python: bool = True
    ) -> SampleSource:
        return self.source(self.options(settings, limits, python), ())

    def make_spec(self, settings: Mapping[str, Any], limits: BpfLimits) -> ProfileSpec:
        return self.spec(self.options(settings, limits))

    def config_settings(self) -> Iterator[Setting]:
        return (s for s in self.settings if s.key)


TYPES: dict[str, ProfileType] = {}


def register(entry: ProfileType) -> ProfileType:
    """Add a type; every reader of the table sees it from now on."""
    if entry.name in TYPES:
        raise ValueError(f"profile type {entry.name!r} is registered already")
    TYPES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    TYPES.pop(name, None)


def get(name: str) -> ProfileType:
    try:
        return TYPES[name]
    except KeyError:
        raise ValueError(f"unknown profile type {name!r}") from None


def names() -> tuple[str, ...]:
    return tuple(TYPES)


def record_settings() -> tuple[Setting, ...]:
    """Every setting with a record flag, once per flag (offcpu and lock share
    --wait-sampling), in the order of the table."""
    seen: dict[str, Setting] = {}
    for t in TYPES.values():
        for s in t.settings:
            if s.flag and s.flag not in seen:
                seen[s.flag] = s
    return tuple(seen.values())


def counter_meanings() -> dict[str, CounterMeaning]:
    """Every counter any type reports, by name (run sums deltas across types)."""
    return {c.name: c for t in TYPES.values() for c in t.counters}


def spec_for(profile_type: str, options: SourceOptions) -> ProfileSpec:
    """The ProfileSpec of one profile type, as its source is configured."""
    return get(profile_type).spec(options)


# -- the counters (agent/kernel/layout.py's Counter, bpf/common.h's CTR_*) ------------

MAP_FULL = CounterMeaning(
    "map_full",
    "samples dropped: the counts map was full",
    LOST_SAMPLES,
    "--max-entries",
    "limits.max_entries",
    "max_entries",
)
USER_COLLISION = CounterMeaning(
    "user_collision",
    "user stacks lost to stack-map collisions",
    LOST_STACKS,
    "--stack-storage-size",
    "limits.stack_storage_size",
    "stack_entries",
)
KERNEL_COLLISION = CounterMeaning(
    "kernel_collision",
    "kernel stacks lost to stack-map collisions",
    LOST_STACKS,
    "--stack-storage-size",
    "limits.stack_storage_size",
    "stack_entries",
)
STACK_ERROR = CounterMeaning("stack_error", "stacks the kernel could not take", LOST_STACKS)
EVENT_LOST = CounterMeaning(
    "event_lost", "new-process events dropped (their maps were read late)", LOST_EVENTS
)
TARGETS_FULL = CounterMeaning(
    "targets_full",
    "child processes not followed: the target set was full",
    limit="target_entries",
)
PENDING_FULL = CounterMeaning(
    "pending_full", "waits or allocations in flight not tracked: their map was full"
)
LIVE_FULL = CounterMeaning(
    "live_full", "sampled allocations left out of inuse_*: the live table was full"
)
SAMPLE_LOST = CounterMeaning(
    "sample_lost",
    "allocation samples or frees dropped: the ring buffer was full",
    LOST_SAMPLES,
    "--alloc-rate",
    "profiles.alloc.rate",
)
UNWIND_TRUNCATED = CounterMeaning(
    "unwind_truncated", "user stacks deeper than 127 frames, marked [user stack truncated]"
)
# What every program with a counts map and stack maps can lose (bpf/waits.h,
# bpf/cpu.bpf.c), and what the follow and unwind code add to each.
STACKS_EXPIRED = CounterMeaning(
    "stacks_expired",
    "waits whose stacks were let go before they ended (their stack generation was reused)",
    LOST_STACKS,
)
STACK_COUNTERS = (MAP_FULL, USER_COLLISION, KERNEL_COLLISION, STACK_ERROR, EVENT_LOST)
WAIT_COUNTERS = (*STACK_COUNTERS, TARGETS_FULL, PENDING_FULL, UNWIND_TRUNCATED, STACKS_EXPIRED)


# -- the settings ---------------------------------------------------------------

FREQUENCY = Setting(
    "frequency",
    "frequency",
    "int",
    # 19 Hz: a prime, so sampling does not lock step with periodic work,
    # and low enough for a host-wide agent to stay well under 1% of a core.
    19,
    1,
    10000,
    flag="-F/--frequency",
    help="CPU samples per second per CPU.",
    unit=" Hz",
    click_range=False,
)
MIN_BLOCK = Setting(
    "min_block_us",
    "min_block_us",
    "int",
    # Host-wide, most blocks are short waits of idle daemons: 1 ms keeps
    # the ones a user asks about ("why is this request slow").
    1000,
    0,
    10**9,
    flag="--min-block-us",
    help="offcpu: ignore blocks shorter than this many microseconds.",
)
MIN_WAIT = Setting(
    "min_wait_us",
    "min_wait_us",
    "int",
    10,
    0,
    10**9,
    flag="--min-wait-us",
    help="lock: ignore waits shorter than this many microseconds.",
)
# offcpu, lock: at most 1 in N short waits takes stacks (bpf/waits.h).
WAIT_SAMPLING = Setting(
    "sampling",
    "wait_sampling",
    "int",
    SourceOptions.wait_sampling,
    1,
    1 << 20,
    flag="--wait-sampling",
    help="offcpu, lock: blocks and waits of 1 ms or more always take stacks; shorter "
    "ones about 1 in N, each counted N times (unbiased). 1: every one.",
)
ALLOC_RATE = Setting(
    "rate",
    "alloc_rate",
    "size",
    # Host-wide allocation probes cost every process something: opt-in,
    # and sparse by default (one sample per 4 MiB allocated on average).
    4 << 20,
    1,
    1 << 40,
    flag="--alloc-rate",
    help="alloc: sample one allocation per this many bytes, on average.",
    unit=" bytes",
)
ALL_PROCESSES = Setting(
    "",
    "all_processes",
    "bool",
    True,
    flag="--all-processes",
    help="alloc: probe every process's allocator (slows the whole host).",
)
INUSE = Setting(
    "inuse",
    "alloc_inuse",
    "bool",
    True,
    flag="--no-inuse",
    help="alloc: do not probe free (cheaper; no inuse_* values).",
    invert=True,
)


# -- the sources and specs (imported when one is made) -------------------------


def _cpu_spec(options: SourceOptions) -> ProfileSpec:
    from agent.pipeline.builder import cpu_spec

    return cpu_spec(options.frequency)


def _offcpu_spec(_options: SourceOptions) -> ProfileSpec:
    from agent.pipeline.builder import offcpu_spec

    return offcpu_spec()


def _lock_spec(_options: SourceOptions) -> ProfileSpec:
    from agent.pipeline.builder import lock_spec
    from agent.sources.lock import lock_labels

    return lock_spec(lock_labels)


def _alloc_spec(options: SourceOptions) -> ProfileSpec:
    from agent.pipeline.builder import alloc_spec

    return alloc_spec(options.alloc_rate)


def _cpu(options: SourceOptions, _command: tuple[str, ...]) -> SampleSource:
    from agent.sources.cpu import CpuSource

    return CpuSource(options)


def _offcpu(options: SourceOptions, _command: tuple[str, ...]) -> SampleSource:
    from agent.sources.offcpu import OffCpuSource

    return OffCpuSource(options)


def _lock(options: SourceOptions, _command: tuple[str, ...]) -> SampleSource:
    from agent.sources.lock import LockSource

    return LockSource(options)


def _alloc(options: SourceOptions, command: tuple[str, ...]) -> SampleSource:
    """`command`: the COMMAND a held child will exec, which the allocation
    source must probe before it runs."""
    from agent.sources.alloc import AllocSource

    return AllocSource(options, command)


def _alloc_program(options: SourceOptions) -> str:
    """The allocation source probes files as it starts: render without it."""
    from agent.kernel import bcc_loader
    from agent.sources.alloc import PROGRAM, alloc_cflags
    from agent.sources.unwinding import first_build_flags

    return bcc_loader.render(PROGRAM, alloc_cflags(options) + first_build_flags(options))


# Run's order: the agent starts, polls and reports the types in this order.
register(
    ProfileType(
        name="cpu",
        settings=(FREQUENCY,),
        source=_cpu,
        spec=_cpu_spec,
        counters=(*STACK_COUNTERS, TARGETS_FULL, UNWIND_TRUNCATED),
        enabled_by_default=True,
    )
)
register(
    ProfileType(
        name="offcpu",
        settings=(MIN_BLOCK, WAIT_SAMPLING),
        source=_offcpu,
        spec=_offcpu_spec,
        counters=WAIT_COUNTERS,
    )
)
register(
    ProfileType(
        name="lock",
        settings=(MIN_WAIT, WAIT_SAMPLING),
        source=_lock,
        spec=_lock_spec,
        counters=WAIT_COUNTERS,
    )
)
register(
    ProfileType(
        name="alloc",
        settings=(ALLOC_RATE, ALL_PROCESSES, INUSE),
        source=_alloc,
        spec=_alloc_spec,
        counters=(TARGETS_FULL, PENDING_FULL, LIVE_FULL, SAMPLE_LOST, UNWIND_TRUNCATED),
        fixed={"all_processes": True},
        program=_alloc_program,
        host_wide="allocation profiling needs --pid or a COMMAND; profiling every process "
        "slows every allocation on the host: pass --all-processes to do it anyway",
        host_wide_cost="--all-processes: probing the system's libc slows every allocation "
        "of every process on this host by about a microsecond while the recording runs",
    )
)


def create_source(
    profile_type: str, options: SourceOptions, command: tuple[str, ...] = ()
) -> SampleSource:
    """The SampleSource for a profile type. `command` is the COMMAND a held
    child will exec, which the allocation source must probe before it runs."""
    return get(profile_type).source(options, command)


def render_program(profile_type: str, options: SourceOptions) -> str:
    """The exact BPF program a profile type would compile with these
    options, its flags shown as #defines (`bpfprof check --print-bpf`)."""
    from agent.sources.program import ProgramSource

    entry = get(profile_type)
    if entry.program is not None:
        return entry.program(options)
    source = entry.source(options, ())
    assert isinstance(source, ProgramSource)
    return source.render()
