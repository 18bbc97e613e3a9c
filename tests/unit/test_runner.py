"""The agent's hub with a plain fake source: intervals become files or OTLP
requests, filters drop processes, counters reach the status file, and a
reload keeps the running session when the new config is bad."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.logging import LogCaptureFixture

from agent.daemon import runner
from agent.daemon.configschema import Override
from agent.daemon.runconfig import RunConfig, load
from agent.daemon.telemetry import SelfUsage
from agent.errors import ConfigError
from agent.exporters.pprof import decode
from agent.model import RawKey, RawSample, RawStack
from agent.pipeline import core
from agent.pipeline.builder import cpu_spec
from agent.pipeline.resolve import StackResolver
from tests.fake_sources import FakeSource
from tests.otlp_receiver import HttpReceiver

ME = os.getpid()


def sample(pid: int, n: int) -> RawSample:
    return RawSample(RawKey(pid, pid, "fake", RawStack()), (n,))


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSource]:
    fake = FakeSource([[sample(ME, 5), sample(1, 2)], [sample(ME, 3)]], seen=[ME])
    monkeypatch.setattr(runner, "make_sources", lambda c: {"cpu": (fake, cpu_spec(19))})
    yield fake


def config(tmp_path: Path, *flags: Override, text: str = "") -> RunConfig:
    path = tmp_path / "c.toml"
    path.write_text(
        f'status_file = "{tmp_path / "status.json"}"\n[output]\ndir = "{tmp_path / "out"}"\n'
        f'[spool]\ndir = "{tmp_path / "spool"}"\n' + text
    )
    return load(path, env={}, flags=list(flags))


def test_intervals_become_rolling_files_and_status(tmp_path: Path, source: FakeSource) -> None:
    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    session.poll()
    session.report()
    session.finish()
    assert source.started and source.closed
    files = sorted((tmp_path / "out").glob("*-cpu.pb.gz"))
    assert len(files) == 2  # the interval, then the flush at finish
    first = decode(files[0].read_bytes())
    assert {s.num_labels["pid"]: s.values[0] for s in first.samples} == {ME: 5, 1: 2}
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped" and status["intervals"] == 2
    assert status["totals"]["samples"] == 30 and status["totals"]["lost_samples"] == 3
    assert status["totals"]["lost_stacks"] == 1


def test_filters_drop_excluded_processes(tmp_path: Path, source: FakeSource) -> None:
    c = config(tmp_path, text="[filter]\nexclude_pids = [1]\n")
    session = runner.Session(c, SelfUsage())
    session.start()
    session.report()
    session.finish()
    files = sorted((tmp_path / "out").glob("*-cpu.pb.gz"))
    pids = {s.num_labels["pid"] for f in files for s in decode(f.read_bytes()).samples}
    assert pids == {ME}


def test_intervals_go_to_a_collector_as_otlp(tmp_path: Path, source: FakeSource) -> None:
    receiver = HttpReceiver().start()
    try:
        endpoint = Override("export.endpoint", receiver.endpoint, "--endpoint")
        protocol = Override("export.protocol", "http/protobuf", "--protocol")
        session = runner.Session(config(tmp_path, endpoint, protocol), SelfUsage())
        session.start()
        session.report()
        session.finish()
    finally:
        receiver.stop()
    requests = receiver.received.snapshot()
    assert len(requests) == 2
    pids = {
        kv.value.int_value
        for rp in requests[0].resource_profiles
        for kv in rp.resource.attributes
        if kv.key == "process.pid"
    }
    assert pids == {ME, 1}
    assert not list((tmp_path / "spool").glob("*.otlp"))


def test_reload_keeps_the_session_on_a_bad_config(
    tmp_path: Path, source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    verdict = tmp_path / "run" / "reload"  # what ExecReload (systemd/bpfprof-reload) reads
    good = config(tmp_path)
    session = runner.Session(good, SelfUsage())

    def bad() -> RunConfig:
        raise ConfigError("c.toml: interval: must be at least 0.2, not 0")

    assert runner.reload_session(bad, session, SelfUsage()) is None
    assert verdict.read_text().split(" ", 1)[1] == (
        "rejected: c.toml: interval: must be at least 0.2, not 0\n"
    )
    assert runner.reload_session(lambda: good, session, SelfUsage()) is None  # unchanged
    assert verdict.read_text().endswith(" ok\n")
    changed = config(tmp_path, Override("interval", 2.0, "--interval"))
    new = runner.reload_session(lambda: changed, session, SelfUsage())
    assert new is not None and new.config.interval == 2.0
    assert verdict.read_text().endswith(" ok\n")
    missing_ca = (
        Override("export.endpoint", "https://c:4318", "--endpoint"),
        Override("export.protocol", "http/protobuf", "--protocol"),
        Override("export.ca_file", str(tmp_path / "missing.pem"), "x"),
    )
    assert (
        runner.reload_session(lambda: config(tmp_path, *missing_ca), session, SelfUsage()) is None
    )
    session.delivery.close(1)


def test_a_profile_that_cannot_be_built_costs_that_profile_not_the_agent(
    tmp_path: Path,
    source: FakeSource,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    real_build = session.core.build
    calls = []

    def build_once_broken(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in one interval")
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(session.core, "build", build_once_broken)
    session.report()  # the broken interval: logged, skipped
    session.report()
    session.finish()
    assert "could not build the cpu profile" in caplog.text
    files = sorted((tmp_path / "out").glob("*-cpu.pb.gz"))
    assert [s.values[0] for s in decode(files[0].read_bytes()).samples] == [3]


class CountingSymbolizer:
    """Names every address "f"; records which (pid, address) it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    def resolve_user(self, pid: int, address: int) -> object:
        self.asked.append((pid, address))
        return _Named("f")

    def resolve_kernel(self, address: int) -> object:
        self.asked.append((-1, address))
        return _Named("k")


@dataclass(frozen=True)
class _Named:
    function: str
    mapping: None = None
    build_id: str = ""
    lines: tuple[()] = ()


def test_a_stack_is_symbolized_once_across_intervals_until_its_process_is_seen_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the same user stack of one process in three intervals
    stack = RawSample(RawKey(ME, ME, "fake", RawStack(user=(0x1234,))), (1,))
    fake = FakeSource([[stack], [stack], [stack]])
    monkeypatch.setattr(runner, "make_sources", lambda c: {"cpu": (fake, cpu_spec(19))})
    session = runner.Session(config(tmp_path), SelfUsage())
    sym = CountingSymbolizer()
    session.start()
    session.core.resolver = StackResolver(sym)  # type: ignore[arg-type]
    # WHEN two intervals pass
    session.report()
    session.report()
    # THEN it was symbolized once
    assert sym.asked == [(ME, 0x1234)]
    # WHEN the process is announced again with other maps (an exec, a dlopen)
    monkeypatch.setattr(core, "read_maps", lambda pid, root: "after an exec\n")
    fake.seen = [ME]
    session.poll()
    session.report()
    session.finish()
    # THEN its addresses are symbolized afresh
    assert sym.asked == [(ME, 0x1234), (ME, 0x1234)]
    files = sorted((tmp_path / "out").glob("*-cpu.pb.gz"))  # (names are per millisecond)
    assert files and all(decode(f.read_bytes()).samples[0].locations[0].frames for f in files)


def test_a_process_announced_again_unchanged_is_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN several sources announcing the same process, whose maps change once
    maps = iter(["text before\n", "text before\n", "text after exec\n"])
    monkeypatch.setattr(core, "read_maps", lambda pid, root: next(maps))
    fake = FakeSource([], seen=[ME, ME, ME])
    monkeypatch.setattr(runner, "make_sources", lambda c: {"cpu": (fake, cpu_spec(19))})
    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    observed: list[int] = []
    real_observe = session.core.processes.observe
    monkeypatch.setattr(
        session.core.processes, "observe", lambda pid: observed.append(pid) or real_observe(pid)
    )
    forgotten: list[int] = []
    monkeypatch.setattr(session.core.resolver, "forget", forgotten.append)
    # WHEN the announcements arrive
    session.poll()
    # THEN the process is read at first sight and after its maps changed only
    assert observed == [ME, ME] and forgotten == [ME, ME]
    session.finish()


def test_a_process_gone_before_its_announcement_is_still_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(pid: int, root: str) -> str:
        raise FileNotFoundError(pid)

    monkeypatch.setattr(core, "read_maps", gone)
    fake = FakeSource([], seen=[ME, ME])
    monkeypatch.setattr(runner, "make_sources", lambda c: {"cpu": (fake, cpu_spec(19))})
    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    session.poll()
    # its facts are read each time (nothing tells "unchanged"), and kept
    assert session.core.processes.get(ME).pid == ME and ME not in session.core.maps_seen
    session.finish()


def test_allocation_ring_buffer_drops_count_as_lost_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allocation source reports its ring-buffer drops as `sample_lost`
    (bpf/alloc.bpf.c CTR_SAMPLE_LOST, read under agent/kernel/layout.py's names)."""
    from agent.kernel.layout import Counter
    from agent.pipeline.builder import alloc_spec

    class AllocLike(FakeSource):
        def counters(self) -> dict[str, int]:
            out = {c.name.lower(): 0 for c in Counter}
            out["sample_lost"] = 4 * self.drained
            return out

    fake = AllocLike([])
    monkeypatch.setattr(runner, "make_sources", lambda c: {"alloc": (fake, alloc_spec(1))})
    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    session.report()
    session.finish()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["totals"]["lost_samples"] == 12  # 3 drains (the flush takes both halves)


def test_export_counts_are_per_interval_in_the_log_line_and_cumulative_in_totals(
    tmp_path: Path, source: FakeSource, monkeypatch: pytest.MonkeyPatch, caplog: LogCaptureFixture
) -> None:
    """GIVEN 3 exports before the first interval closes and 2 more before the
    second, THEN the interval lines say 3 and 2, the totals 3 and 5; and the
    Python frames left without a name are counted the same way."""
    from agent.daemon.delivery import DeliveryStats

    session = runner.Session(config(tmp_path), SelfUsage())
    session.start()
    monkeypatch.setattr(session.delivery, "submit", lambda *_: None)  # the test counts sends
    session.delivery.stats = DeliveryStats()
    python = {"python_code_misses": 0, "python_frames_named": 9}
    counters = session.core.counters
    monkeypatch.setattr(session.core, "counters", lambda: {**counters(), "python": dict(python)})
    caplog.set_level(logging.INFO, logger="bpfprof.run")
    seen = []
    for sent, misses in ((3, 4), (5, 4)):
        session.delivery.stats.sent, python["python_code_misses"] = sent, misses
        session.report()
        seen.append(json.loads((tmp_path / "status.json").read_text()))
    session.close_sources()
    session.delivery.close(1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interval ")]
    assert [re.findall(r"(export_ok|python_code_misses)=(\d+)", line) for line in lines] == [
        [("python_code_misses", "4"), ("export_ok", "3")],
        [("python_code_misses", "0"), ("export_ok", "2")],
    ]
    assert [s["last_interval"]["export_ok"] for s in seen] == [3, 2]
    assert [s["totals"]["export_ok"] for s in seen] == [3, 5]
    assert [s["last_interval"]["python_code_misses"] for s in seen] == [4, 0]
    assert [s["totals"]["python_code_misses"] for s in seen] == [4, 4]
    assert seen[1]["now"]["processes"] >= 0 and "processes" not in seen[1]["totals"]
