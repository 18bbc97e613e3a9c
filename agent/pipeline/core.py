"""The collection core that `record` and `run` share.

A Collection holds the sample sources of one recording or one agent
session, one per profile type, and everything kept per process to turn their
samples into profiles: the symbolizer (maps and symbol tables), the Python
frames' names (each process's CPython, its code objects), the resolver
(locations cached per pid), the process table (names, container, service) and
which maps were last seen. A source announces each new process (or one that
exec'd or dlopen'd); the core reads its maps once, captures its facts while it
lives and hands the maps to the symbolizer. `forget(pid)` reaches every one
of these holders, and the ones a driver adds (the daemon's filter), so
memory follows the live processes.

What differs between the drivers stays with them: `record` adds an
aggregator over windows and writes one file; `run` adds filters, delivery
and telemetry on a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from agent.model import Profile, RawKey, RawSample, Sample
from agent.pipeline.builder import ProfileSpec, build_profile
from agent.pipeline.procinfo import ProcessFacts, ProcessTable, process_resource
from agent.pipeline.resolve import StackResolver
from agent.sources.base import PythonCodeSource, SampleSource, SnapshotSource
from symbolizer import Symbolizer, parse_maps, read_maps
from symbolizer.cpython.names import PythonNames
from symbolizer.elf import ElfError

Resource = tuple[tuple[str, str | int], ...]

log = logging.getLogger("bpfprof.collection")


class Forgets(Protocol):
    def forget(self, pid: int) -> None: ...


class Collection:
    """Sources by profile type, with their symbolizer, resolver and process table.

    `wants(facts)`: whether a process is profiled at all (the daemon's
    filters); a process it refuses is not symbolized. `on_maps(pid, text)`:
    sees each maps text read (a capture saves them). `forgetters`: more
    per-pid holders that forget(pid) and a re-announced process reach.
    """

    def __init__(
        self,
        streams: dict[str, tuple[SampleSource, ProfileSpec]],
        *,
        wants: Callable[[ProcessFacts], bool] | None = None,
        on_maps: Callable[[int, str], None] | None = None,
        forgetters: Iterable[Forgets] = (),
        proc_root: str = "/proc",
    ) -> None:
        self.streams = streams
        self.symbolizer = Symbolizer()
        self.processes = ProcessTable(proc_root)
        # Python frames' names: each process's CPython and its code objects
        self.python = PythonNames(self.symbolizer.proc_root)
        # one for the collection: a stack seen every interval is symbolized once
        self.resolver = StackResolver(self.symbolizer, self.python)
        self._wants = wants
        self._on_maps = on_maps
        self.maps_seen: dict[int, tuple[int, int]] = {}  # pid -> its maps' (length, hash)
        self._forgetters = list(forgetters)

    # -- the sources ---------------------------------------------------------

    def start(self) -> None:
        """Start every source; if one fails, close them all and raise."""
        try:
            for source, _ in self.streams.values():
                source.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for source, _ in self.streams.values():
            source.close()

    def prewarm(self, files: Iterable[str]) -> None:
        """Read the symbol tables of files before they run (a COMMAND's
        executable and libraries, whose unwind tables the walker builds the
        same way): a held command's first announcement then finds them
        cached, instead of parsing libc while the command's first children
        start and exit unread. Host paths of bpfprof's own COMMAND."""
        for path in files:
            try:
                self.symbolizer.load_file(path)
            except (OSError, ElfError) as exc:
                log.debug("no symbols for %s before start: %s", path, exc)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` once in all, taking each source's new
        processes, then the code objects its Python walker met first: their
        names are read now, while the process lives (it may be gone by the
        time its samples are resolved)."""
        for source, _ in self.streams.values():
            source.poll(timeout_ms, self.on_new_process)
            timeout_ms = 0
            if isinstance(source, PythonCodeSource):
                for pid, code in source.python_codes():
                    self.python.prefetch(pid, code)

    def drain(self, final: bool = False) -> dict[str, list[RawSample]]:
        """What each source counted since the last drain; `final` takes the
        other half of the double buffers too."""
        out = {}
        for name, (source, _) in self.streams.items():
            raw = source.drain()
            if final:
                raw += source.drain()
            out[name] = raw
        return out

    def live_heap(self) -> dict[str, list[RawSample]]:
        """inuse_* of the sources that keep a snapshot: what is allocated now."""
        return {
            name: source.live_heap()
            for name, (source, _) in self.streams.items()
            if isinstance(source, SnapshotSource)
        }

    def counters(self) -> dict[str, dict[str, int]]:
        """Each source's self-metrics since it started, and under "python"
        the Python frames' (symbolizer/cpython/names.py: python_*)."""
        out = {name: source.counters() for name, (source, _) in self.streams.items()}
        out["python"] = self.python_counters()
        return out

    def python_counters(self) -> dict[str, int]:
        """The Python frames' self-metrics (no source asked: also after close)."""
        return {**self.python.counters(), "python_unnamed_locations": self.resolver.python_unnamed}

    # -- processes -----------------------------------------------------------

    def on_new_process(self, pid: int) -> None:
        """A source saw `pid` for the first time (or after an exec or dlopen).

        Every source announces every process it sees, so with several types
        the same process comes several times: when its maps are what they
        were at the last announcement, nothing about it changed (an exec or
        a dlopen changes them), and its facts are not read again."""
        try:
            text: str | None = read_maps(pid, self.processes.proc_root)
        except OSError:  # gone already: record what can still be read
            text = None
        if text is not None:
            digest = (len(text), hash(text))
            if self.maps_seen.get(pid) == digest:
                return
            self.maps_seen[pid] = digest
            if self._on_maps:
                self._on_maps(pid, text)
        facts = self.processes.observe(pid)
        self.resolver.forget(pid)  # its addresses may mean something else now
        for holder in self._forgetters:
            holder.forget(pid)
        if self._wants is None or self._wants(facts):
            self.symbolizer.observe(pid, text)
            if text is not None:
                self.python.observe(pid, parse_maps(text))
        else:
            self.python.forget(pid)

    def forget(self, pid: int) -> None:
        """Drop everything kept for `pid`, everywhere."""
        self.processes.forget(pid)
        self.symbolizer.forget(pid)
        self.maps_seen.pop(pid, None)
        self.resolver.forget(pid)
        self.python.forget(pid)
        for holder in self._forgetters:
            holder.forget(pid)

    def forget_gone(self, keep: set[int]) -> list[int]:
        """Forget the processes that exited, except those in `keep` (samples
        still to be exported); returns them."""
        gone = self.processes.prune(keep)
        for pid in gone:
            self.forget(pid)
        return gone

    def process_name(self, key: RawKey) -> str:
        return self.processes.get(key.pid).exe_name

    def container_id(self, pid: int) -> str:
        return self.processes.get(pid).container_id

    def resource(
        self,
        host_name: str,
        extra: tuple[tuple[str, str], ...] = (),
        default_service: str = "",
        command_line: bool = False,
    ) -> Callable[[Sample], Resource]:
        """The OTLP resource of each sample's process: the one function both
        drivers use (pipeline/procinfo.py says what goes in)."""

        def resource_of(s: Sample) -> Resource:
            facts = self.processes.get(int(s.num_labels["pid"]))
            return process_resource(facts, host_name, extra, default_service, command_line)

        return resource_of

    # -- profiles ------------------------------------------------------------

    def build(
        self, name: str, raw: Iterable[RawSample], start_ns: int, duration_ns: int
    ) -> Profile:
        """One validated Profile of type `name` from its raw samples."""
        return build_profile(
            raw,
            self.streams[name][1],
            self.resolver,
            self.process_name,
            time_nanos=start_ns,
            duration_nanos=duration_ns,
            container_id=self.container_id,
        )
