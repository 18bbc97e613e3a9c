"""`bpfprof record`: one profile of a command, some pids or the whole system.

The collection core (agent/pipeline/core.py) with one source: it polls for
new processes (whose maps and facts are captured at once, so processes that
exit during the recording still resolve) and is drained every window into
the aggregator; at the end the samples are resolved, built into one
validated Profile and written.

The profile's time and duration are what was sampled, not the set-up: for
a COMMAND, its life from release to exit; otherwise from when the program
was attached (the BPF compile, about a second or more, is left out) to
the last drain. -d counts from there too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

from agent import registry
from agent.config import RecordConfig
from agent.errors import TargetError
from agent.exporters.output import check_destination, write_profile
from agent.kernel.privileges import require_privileges
from agent.model import Profile
from agent.pipeline.aggregate import Aggregator
from agent.pipeline.core import Collection
from agent.record.capture import Capture
from agent.record.command import HeldCommand
from agent.sources.unwinding import command_files

log = logging.getLogger("bpfprof.record")


def require_pids(pids: tuple[int, ...], proc_root: str = "/proc") -> None:
    for pid in pids:
        if not os.path.isdir(f"{proc_root}/{pid}"):
            raise TargetError(f"no process with pid {pid}")


class Stop:
    """Set by SIGINT/SIGTERM: ends the recording cleanly, the file still written."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def record(config: RecordConfig, capture: Capture | None = None) -> int:
    """Record one profile; with `capture`, also save what replays it (agent/record/capture.py)."""
    require_privileges("record")
    require_pids(config.pids)
    check_destination(config.output)  # not after minutes of recording
    child = HeldCommand(config.command) if config.command else None
    options = config.source_options()
    source = registry.create_source(config.profile_type, options, config.command)
    if capture:
        source = capture.wrap(source)
    warn_all_processes(config)
    spec = registry.spec_for(config.profile_type, options)
    collection = Collection(
        {config.profile_type: (source, spec)}, on_maps=capture.note_maps if capture else None
    )
    try:
        source.add_targets((child.pid,) if child else config.pids)
        collection.start()
        collection.prewarm(command_files(options.prewarm))  # before the command runs
        for pid in config.pids:
            collection.on_new_process(pid)
        aggregator, span = run_loop(config, collection, child)
    except BaseException:
        if child:
            child.abandon()
        collection.close()
        raise
    counters = collection.counters()[config.profile_type]
    collection.close()
    return finish(config, aggregator, collection, counters, span, child, capture)


def sampled_span(began: float, ended: float, child: HeldCommand | None) -> tuple[float, float]:
    """(start, end) of what the profile covers, time.time() seconds: the
    command's life when it was released and exited within the recording,
    else from `began` (sampling on) to `ended` (the loop left)."""
    if child and child.released is not None:
        began = child.released
        if child.ended is not None:
            ended = min(ended, child.ended)
    return began, max(began, ended)


def run_loop(
    config: RecordConfig, collection: Collection, child: HeldCommand | None
) -> tuple[Aggregator, tuple[float, float]]:
    """Sample until the command exits, -d passes or a signal comes; the
    aggregated samples and the span sampled (sampled_span)."""
    stop = Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    aggregator = Aggregator()
    target = "the whole system"
    if child:
        child.release()
        target = " ".join(config.command)
    elif config.pids:
        target = "pid " + ", ".join(map(str, config.pids))
    until = f" for {config.duration:g}s" if config.duration else " (Ctrl-C to stop)"
    print(f"bpfprof: recording {config.profile_type} of {target}{until}", file=sys.stderr)
    began = child.released if child and child.released else time.time()
    deadline = began + config.duration if config.duration else None
    next_drain = time.monotonic() + config.window
    name = config.profile_type
    try:
        while not stop.requested:
            collection.poll(100)
            if child and child.poll() is not None:
                break
            if deadline and time.time() >= deadline:
                break
            if time.monotonic() >= next_drain:
                aggregator.add(collection.drain()[name])
                next_drain += config.window
        ended = time.time()
        collection.poll(0)
        aggregator.add(collection.drain(final=True)[name])
        aggregator.add(collection.live_heap().get(name, ()))  # inuse_*: still allocated now
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return aggregator, sampled_span(began, ended, child)


def finish(
    config: RecordConfig,
    aggregator: Aggregator,
    collection: Collection,
    counters: dict[str, int],
    span: tuple[float, float],
    child: HeldCommand | None,
    capture: Capture | None = None,
) -> int:
    started, duration = span[0], span[1] - span[0]
    profile = collection.build(
        config.profile_type, aggregator.take(), int(started * 1e9), int(duration * 1e9)
    )
    resource = collection.resource(socket.gethostname())
    size = write_profile(profile, config.output, config.output_format, resource)
    if capture:
        options = config.source_options()
        capture.save(
            config.profile_type, options, profile.time_nanos, profile.duration_nanos,
            counters, collection.symbolizer, collection.container_id, collection.python,
        )  # fmt: skip
    pids = len({s.num_labels["pid"] for s in profile.samples})
    print(
        f"bpfprof: wrote {summary(profile)} from {pids} processes to {config.output} "
        f"({size} bytes, {duration:.1f}s)",
        file=sys.stderr,
    )
    report_counters(counters, config)
    report_exited(collection.symbolizer.stats.exited_unread)
    report_python(collection.python_counters())  # the sources are closed by now
    if child and child.status is not None and child.status != 0:
        print(f"bpfprof: note: the command exited with status {child.status}", file=sys.stderr)
    return 0


def summary(profile: Profile) -> str:
    """What a profile holds, in its own terms: samples, or stacks and a total."""
    first = profile.sample_types[0]
    if first.type == "samples":
        return f"{sum(s.values[0] for s in profile.samples)} samples"
    index = profile.sample_index(None)
    total = sum(s.values[index] for s in profile.samples)
    kind = profile.sample_types[index]
    return f"{len(profile.samples)} stacks ({kind.type} {total} {kind.unit})"


def warn_all_processes(config: RecordConfig) -> None:
    cost = registry.get(config.profile_type).host_wide_cost
    if cost and config.all_processes:
        log.warning("%s", cost)


def report_exited(processes: int) -> None:
    """One line for the processes that exited before their maps or files
    were read (each was counted, not warned about: a busy host starts and
    ends hundreds a second)."""
    if processes:
        log.warning(
            "%d processes exited before their memory maps or files could be read: "
            "their frames show as addresses",
            processes,
        )


def report_python(counters: dict[str, int]) -> None:
    """One warning if Python frames went without a name, and why."""
    if counters.get("python_code_misses"):
        log.warning(
            "%d Python frames got no name (no interpreter found: %d, unreadable: %d, "
            "met only after the process exited: %d); they show as [python code 0x...]",
            counters["python_code_misses"],
            counters.get("python_no_target", 0),
            counters.get("python_unreadable", 0),
            counters.get("python_never_decoded", 0),
        )


def report_counters(counters: dict[str, int], config: RecordConfig) -> None:
    """One warning per kind of loss the type's counters report, naming the
    option to raise (agent/registry.py says what each one means)."""
    for meaning in registry.get(config.profile_type).counters:
        if counters.get(meaning.name):
            log.warning("%d %s", counters[meaning.name], meaning.warning(config.limits))
