"""`bpfprof record`: one profile of a command, some pids or the whole system.

The runner wires the stages on a clock: the source polls for new processes
(whose maps the symbolizer captures at once, so processes that exit during
the recording still resolve) and is drained every window into the
aggregator; at the end the samples are resolved, built into one validated
Profile and written.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from agent.aggregate import Aggregator
from agent.builder import build_profile, cpu_spec
from agent.command import HeldCommand
from agent.config import RecordConfig
from agent.errors import PrivilegeError, TargetError
from agent.model import RawKey
from agent.output import write_profile
from agent.procfs import ContainerIds
from agent.resolve import StackResolver
from agent.sources.base import SampleSource
from agent.sources.cpu import CpuSource
from symbolizer import Symbolizer

log = logging.getLogger("bpfprof.record")

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def has_bpf_privileges(status_text: str, euid: int) -> bool:
    """Root, or CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN (older kernels)."""
    if euid == 0:
        return True
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
            have = {bit for bit in (CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF) if caps >> bit & 1}
            return CAP_SYS_ADMIN in have or {CAP_BPF, CAP_PERFMON} <= have
    return False


def require_privileges() -> None:
    status = Path("/proc/self/status").read_text()
    if not has_bpf_privileges(status, os.geteuid()):
        raise PrivilegeError(
            "bpfprof record needs root (or CAP_BPF and CAP_PERFMON): run it with sudo"
        )


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


def record(config: RecordConfig) -> int:
    require_privileges()
    require_pids(config.pids)
    started = time.time()
    child = HeldCommand(config.command) if config.command else None
    source = CpuSource(config.source_options())
    symbolizer = Symbolizer()
    containers = ContainerIds()
    try:
        targets = (child.pid,) if child else config.pids
        source.add_targets(targets)
        source.start()

        def observe(pid: int) -> None:
            symbolizer.observe(pid)
            containers.observe(pid)

        for pid in config.pids:
            observe(pid)
        aggregator = run_loop(config, source, observe, child, started)
    except BaseException:
        if child:
            child.abandon()
        source.close()
        raise
    counters = source.counters()
    source.close()
    return finish(config, aggregator, symbolizer, containers, counters, started, child)


def run_loop(
    config: RecordConfig,
    source: SampleSource,
    observe: Callable[[int], None],
    child: HeldCommand | None,
    started: float,
) -> Aggregator:
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
    deadline = started + config.duration if config.duration else None
    next_drain = time.monotonic() + config.window
    try:
        while not stop.requested:
            source.poll(100, observe)
            if child and child.poll() is not None:
                break
            if deadline and time.time() >= deadline:
                break
            if time.monotonic() >= next_drain:
                aggregator.add(source.drain())
                next_drain += config.window
        source.poll(0, observe)
        aggregator.add(source.drain())
        aggregator.add(source.drain())  # the other half of the double buffer
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return aggregator


def finish(
    config: RecordConfig,
    aggregator: Aggregator,
    symbolizer: Symbolizer,
    containers: ContainerIds,
    counters: dict[str, int],
    started: float,
    child: HeldCommand | None,
) -> int:
    resolver = StackResolver(symbolizer)

    def process_name(key: RawKey) -> str:
        return symbolizer.process_name(key.pid)

    duration = time.time() - started
    profile = build_profile(
        aggregator.take(),
        cpu_spec(config.frequency),
        resolver,
        process_name,
        time_nanos=int(started * 1e9),
        duration_nanos=int(duration * 1e9),
        container_id=containers.get,
    )
    size = write_profile(profile, config.output, config.output_format)
    samples = sum(s.values[0] for s in profile.samples)
    pids = len({s.num_labels["pid"] for s in profile.samples})
    print(
        f"bpfprof: wrote {samples} samples from {pids} processes to {config.output} "
        f"({size} bytes, {duration:.1f}s)",
        file=sys.stderr,
    )
    report_counters(counters, config)
    if child and child.status is not None and child.status != 0:
        print(f"bpfprof: note: the command exited with status {child.status}", file=sys.stderr)
    return 0


def report_counters(counters: dict[str, int], config: RecordConfig) -> None:
    """One warning per kind of loss, naming the option to raise."""
    limits = config.limits
    lost = {
        "map_full": f"samples dropped: the counts map was full "
        f"(raise --max-entries, now {limits.max_entries})",
        "user_collision": f"user stacks lost to stack-map collisions "
        f"(raise --stack-storage-size, now {limits.stack_entries})",
        "kernel_collision": f"kernel stacks lost to stack-map collisions "
        f"(raise --stack-storage-size, now {limits.stack_entries})",
        "stack_error": "stacks the kernel could not take",
        "event_lost": "new-process events dropped (their maps were read late)",
        "targets_full": f"child processes not followed: the target set was full "
        f"({limits.target_entries})",
    }
    for name, text in lost.items():
        if counters.get(name):
            log.warning("%d %s", counters[name], text)
