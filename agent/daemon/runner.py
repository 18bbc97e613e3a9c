"""`bpfprof run`: the continuous agent, the one hub that wires every stage.

Each interval: poll the sources for new processes (their facts and maps are
captured at once, while they live), drain each source, drop the samples of
processes the filters exclude, resolve and build one Profile per type,
encode (one OTLP request for all types, or one pprof file per type) and hand
it to the Delivery worker, which never makes this loop wait. Then forget the
processes that are gone, so memory follows the live process count.

SIGTERM/SIGINT: finish the interval in progress, give the worker a few
seconds to send (the rest goes to the spool), exit 0. SIGHUP: load the
config again; a bad one is logged and the old one kept; a good one restarts
the pipeline with it after flushing the current interval. Either way the
verdict is written to a file (reload_verdict_path) that the unit's
ExecReload (systemd/bpfprof-reload) waits for, so `systemctl reload` fails
when the new config is rejected.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from agent import registry
from agent.daemon.delivery import Delivery, Send
from agent.daemon.filters import ProcessFilter
from agent.daemon.rolling import RollingFiles, file_name
from agent.daemon.runconfig import RunConfig
from agent.daemon.spool import Spool
from agent.daemon.telemetry import SelfUsage, check_status_dir, log_line, write_status
from agent.daemon.transport import Transport, check_request, make_transport
from agent.errors import ConfigError
from agent.exporters import encode
from agent.exporters.otlp import RequestBuilder
from agent.kernel.privileges import require_privileges
from agent.model import Profile, RawSample
from agent.pipeline.builder import ProfileSpec
from agent.pipeline.core import Collection
from agent.safewrite import private_dir, write_atomic
from agent.sources.base import SampleSource
from symbolizer.budget import cancel_all

log = logging.getLogger("bpfprof.run")

FLUSH_SECONDS = 4.0  # SIGTERM to exit: systemd's default stop timeout is 90 s
POLL_MS = 200


class Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; the loop checks the flags."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop = True
        cancel_all()  # a file being parsed gives up at its next budget check

    def _reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True


def release_compiler_memory() -> None:
    """Give the heap LLVM used to compile the BPF programs back to the kernel.

    glibc keeps freed memory in its arenas; BCC's compile leaves tens of MiB
    there that an agent living for months would otherwise hold as RSS."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_sources(config: RunConfig) -> dict[str, tuple[SampleSource, ProfileSpec]]:
    """One source and spec per enabled type: the only place types are built."""
    out = {}
    for name, _ in config.profiles:
        t, settings = registry.get(name), config.type_settings(name)
        source = t.make_source(settings, config.limits, config.python_frames)
        out[name] = (source, t.make_spec(settings, config.limits))
    return out


def lost(deltas: dict[str, float]) -> dict[str, float]:
    """lost_samples, lost_stacks and lost_events of an interval: each
    counter's delta added where the registry says it belongs."""
    out: dict[str, float] = dict.fromkeys(registry.LOSS_KINDS, 0)
    for name, meaning in registry.counter_meanings().items():
        if meaning.account:
            out[meaning.account] += deltas.get(name, 0)
    return out


def make_delivery(config: RunConfig) -> tuple[Delivery, Transport | None, Spool | None]:
    if not config.export.endpoint:
        files = RollingFiles(config.output_dir, config.output_max_files, config.output_max_bytes)
        return Delivery(files.send, config.export.retry, config.export.queue_size), None, None
    try:
        transport = make_transport(config.export)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"export: cannot set up TLS: {e}") from None
    spool = Spool(config.spool_dir, config.spool_max_bytes, check_request)

    def send(_label: str, payload: bytes) -> str:
        return transport.send(payload)

    sink: Send = send
    return Delivery(sink, config.export.retry, config.export.queue_size, spool), transport, spool


class Session:
    """One configuration's pipeline, from start to its last flushed interval."""

    def __init__(self, config: RunConfig, usage: SelfUsage) -> None:
        self.config = config
        self.usage = usage
        check_status_dir(config.status_file)  # a ConfigError before anything starts
        self.filter = ProcessFilter(config.filter)
        self.collection: Collection | None = None
        self.delivery, self.transport, self.spool = make_delivery(config)
        self.last_counters: dict[str, dict[str, int]] = {}
        self.last_cumulative: dict[str, int] = {}
        self.totals: dict[str, float] = {}
        self.intervals = 0
        self.started = time.time()
        self.window_start = time.time_ns()

    @property
    def core(self) -> Collection:
        assert self.collection is not None, "start() first"
        return self.collection

    def start(self) -> None:
        """Start the sources (a failure closes them all: Collection.start)."""
        sources = make_sources(self.config)
        self.collection = Collection(sources, wants=self.filter.wants, forgetters=(self.filter,))
        self.collection.start()
        release_compiler_memory()
        self.delivery.start()
        self.window_start = time.time_ns()
        where = self.config.export.endpoint or f"files in {self.config.output_dir}"
        log.info(
            "profiling %s every %gs to %s",
            ", ".join(self.core.streams),
            self.config.interval,
            where,
        )

    def poll(self) -> None:
        self.core.poll(POLL_MS)

    def wanted(self, samples: list[RawSample]) -> list[RawSample]:
        if not self.filter.active:
            return samples
        return [s for s in samples if self.filter.wants(self.core.processes.get(s.key.pid))]

    def report(self, final: bool = False) -> None:
        """Close the interval: drain, build, encode, submit, account."""
        core = self.core
        now = time.time_ns()
        start, self.window_start = self.window_start, now
        core.resolver.start_interval()
        drains = core.drain(final)
        for name, live in core.live_heap().items():
            drains[name] += live  # inuse_*: what is still allocated now
        profiles: dict[str, Profile] = {}
        drained = 0
        for name, raw in drains.items():
            drained += sum(s.values[0] for s in raw if s.values)
            try:
                profiles[name] = core.build(name, self.wanted(raw), start, now - start)
            except Exception:  # a bug must cost one profile, not the agent
                log.exception("could not build the %s profile of this interval", name)
        self.submit(profiles, now)
        core.forget_gone({int(s.num_labels["pid"]) for p in profiles.values() for s in p.samples})
        self.account(drained, core.resolver.misses)

    def submit(self, profiles: dict[str, Profile], now: int) -> None:
        if not any(p.samples for p in profiles.values()):
            return
        if not self.config.export.endpoint:
            for name, profile in profiles.items():
                if profile.samples:
                    self.delivery.submit(file_name(name, now / 1e9), encode(profile, "pprof"))
            return
        r = self.config.resource
        resource = self.core.resource(r.host_name, r.attributes, r.service_name, r.command_line)
        builder = RequestBuilder()
        for profile in profiles.values():
            builder.add(profile, resource)
        self.delivery.submit("interval", builder.request().SerializeToString())

    def account(self, drained: int, misses: int) -> None:
        """Log and write this interval's counts (deltas of every cumulative
        counter), the totals since start, and the gauges read now."""
        deltas: dict[str, float] = {"symbolization_misses": misses}
        for name, now in self.core.counters().items():
            before = self.last_counters.get(name, {})
            self.last_counters[name] = now
            for k, v in now.items():
                deltas[k] = deltas.get(k, 0) + v - before.get(k, 0)
        last: dict[str, Any] = {"samples": deltas.get("samples", drained), **lost(deltas)}
        last["map_full"] = deltas.get("map_full", 0)
        last["symbolization_misses"] = misses
        # Python frames shown as [python code 0x...] (symbolizer/cpython/names.py)
        last["python_code_misses"] = deltas.get("python_code_misses", 0)
        last.update(self.cumulative_deltas())
        for k, v in last.items():
            self.totals[k] = self.totals.get(k, 0) + v
        cpu, rss = self.usage.sample()
        gauges = {
            "processes": len(self.core.processes),
            "queue": self.delivery.queued,
            "spool": len(self.spool) if self.spool else 0,
            "cpu_percent": cpu,
            "rss_mib": rss,
        }
        last.update(gauges)
        self.intervals += 1
        log.info("interval %d: %s", self.intervals, log_line(last))
        self.write_status("running", last, gauges)

    def cumulative_deltas(self) -> dict[str, int]:
        """How much each of cumulative() grew since the last call."""
        out = {}
        for k, v in self.cumulative().items():
            out[k] = v - self.last_cumulative.get(k, 0)
            self.last_cumulative[k] = v
        return out

    def cumulative(self) -> dict[str, int]:
        """Counters the stages keep since the session started."""
        stats, symbolizer = self.delivery.stats, self.core.symbolizer.stats
        return {
            "export_ok": stats.sent,
            "export_failed": stats.failed,
            "export_retries": stats.retries,
            # `is not None`: an empty Spool is falsy (it has a length)
            "spool_dropped": self.spool.dropped if self.spool is not None else 0,
            "spool_corrupt": self.spool.corrupt if self.spool is not None else 0,
            # pids whose /tmp/perf-PID.map was refused or cut (symbolizer/perfmap.py)
            "perf_map_refused": symbolizer.perf_map_refused,
            "perf_map_truncated": symbolizer.perf_map_truncated,
            # files over their per-file budget (symbolizer/budget.py): bombs
            "elf_budget_exceeded": symbolizer.budget_exceeded,
            "unwind_budget_exceeded": sum(
                c.get("unwind_budget_exceeded", 0) for c in self.last_counters.values()
            ),
        }

    def write_status(self, state: str, last: dict[str, Any], gauges: dict[str, Any]) -> None:
        write_status(
            self.config.status_file,
            {
                "state": state,
                "pid": os.getpid(),
                "updated": time.time(),
                "started": self.started,
                "interval": self.config.interval,
                "intervals": self.intervals,
                "config": self.config.source,
                "exporting_to": self.config.export.endpoint or str(self.config.output_dir),
                "profiles": ",".join(name for name, _ in self.config.profiles),
                "last_interval": last,
                "totals": {**self.totals, "cpu_seconds": self.usage.total_cpu_seconds},
                "now": gauges,
            },
        )

    def close_sources(self) -> None:
        if self.collection is not None:
            self.collection.close()

    def finish(self, state: str = "stopped") -> None:
        """Flush the interval in progress, then stop everything."""
        try:
            self.report(final=True)
        finally:
            self.close_sources()
            self.delivery.close(FLUSH_SECONDS)
            if self.transport:
                self.transport.close()
        for k, v in self.cumulative_deltas().items():  # the flush's sends count too
            self.totals[k] = self.totals.get(k, 0) + v
        self.write_status(state, {}, {"queue": self.delivery.queued})


def run(load: Callable[[], RunConfig]) -> int:
    """Run until SIGTERM/SIGINT; `load` builds the config (again on SIGHUP)."""
    require_privileges("run")
    config = load()
    signals = Signals()
    signals.install()
    usage = SelfUsage()
    session = Session(config, usage)
    session.start()
    while True:
        next_report = time.monotonic() + session.config.interval
        while not (signals.stop or signals.reload):
            session.poll()
            if time.monotonic() >= next_report:
                session.report()
                next_report += session.config.interval
                if next_report < time.monotonic():  # fell behind: do not burst
                    next_report = time.monotonic() + session.config.interval
        if signals.stop:
            session.finish()
            log.info("stopped after %d intervals", session.intervals)
            return 0
        signals.reload = False
        replacement = reload_session(load, session, usage)
        if replacement is not None:
            session.finish("reloading")
            session = replacement
            session.start()


def reload_session(load: Callable[[], RunConfig], old: Session, usage: SelfUsage) -> Session | None:
    """A session for the new config if it is valid and different; None keeps
    the running one. Everything that can reject a config (values, TLS files,
    directories) is checked here, before the running pipeline is stopped.
    The verdict goes to reload_verdict_path for ExecReload to report."""
    verdict = reload_verdict_path(old.config.status_file)
    try:
        new = load()
        if new == old.config:
            log.info("config reloaded: no change")
            write_reload_verdict(verdict, "")
            return None
        session = Session(new, usage)
    except (ConfigError, OSError) as e:
        log.error("config reload failed, keeping the running config: %s", e)
        write_reload_verdict(verdict, str(e) or type(e).__name__)
        return None
    log.info("config reloaded from %s: restarting the pipeline", new.source)
    write_reload_verdict(verdict, "")
    return session


_reloads = itertools.count(1)


def reload_verdict_path(status_file: Path) -> Path:
    """Where each SIGHUP's verdict goes: systemd's $RUNTIME_DIRECTORY
    (/run/bpfprof, which ExecReload sees too), else beside the status file."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime or status_file.parent) / "reload"


def write_reload_verdict(path: Path, error: str) -> None:
    """One line, `<pid>:<n> ok` or `<pid>:<n> rejected: <why>`: unique per
    reload, so a waiter that read the line before its SIGHUP sees it change.
    A failure to write costs only the verdict (ExecReload then times out)."""
    outcome = "rejected: " + " ".join(error.split()) if error else "ok"
    with contextlib.suppress(OSError):
        private_dir(path.parent)
        write_atomic(path, f"{os.getpid()}:{next(_reloads)} {outcome}\n".encode())
