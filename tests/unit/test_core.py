"""The collection core (agent/pipeline/core.py) that record and run share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.model import RawKey, RawSample, RawStack
from agent.pipeline import core
from agent.pipeline.builder import alloc_spec, cpu_spec
from agent.pipeline.core import Collection
from agent.pipeline.procinfo import ProcessFacts
from agent.sources.unwinding import command_files
from tests import fake_sources as fakes

ME = os.getpid()


class FakeSource(fakes.FakeSource):
    def counters(self) -> dict[str, int]:
        return {"samples": 1}


@dataclass
class FakeHeap(FakeSource):
    def live_heap(self) -> list[RawSample]:
        return [sample(ME, 9)]


@dataclass
class Holder:
    forgotten: list[int] = field(default_factory=list)

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)


def sample(pid: int, n: int) -> RawSample:
    return RawSample(RawKey(pid, pid, "fake", RawStack()), (n,))


def test_a_failed_start_closes_every_source() -> None:
    good, bad = FakeSource([]), FakeSource([], fail_start=True)
    c = Collection({"cpu": (good, cpu_spec(19)), "offcpu": (bad, cpu_spec(19))})
    with pytest.raises(OSError):
        c.start()
    assert good.closed and bad.closed


def test_drain_takes_both_halves_when_final_and_live_heap_only_from_snapshots() -> None:
    cpu = FakeSource([[sample(ME, 1)], [sample(ME, 2)], [sample(ME, 3)]])
    heap = FakeHeap([])
    c = Collection({"cpu": (cpu, cpu_spec(19)), "alloc": (heap, alloc_spec(1))})
    assert c.drain() == {"cpu": [sample(ME, 1)], "alloc": []}
    assert c.drain(final=True)["cpu"] == [sample(ME, 2), sample(ME, 3)]
    assert c.live_heap() == {"alloc": [sample(ME, 9)]}
    counters = c.counters()
    assert {k: counters[k] for k in ("cpu", "alloc")} == {
        "cpu": {"samples": 1},
        "alloc": {"samples": 1},
    }
    assert counters["python"]["python_code_misses"] == 0  # the Python frames' own


def test_a_new_process_is_read_once_per_maps_text(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = iter(["a\n", "a\n", "b\n"])
    monkeypatch.setattr(core, "read_maps", lambda pid, root: next(maps))
    seen: list[tuple[int, str]] = []
    holder = Holder()
    source = FakeSource([], seen=[ME, ME, ME])
    c = Collection(
        {"cpu": (source, cpu_spec(19))},
        on_maps=lambda pid, text: seen.append((pid, text)),
        forgetters=(holder,),
    )
    c.poll(0)
    assert seen == [(ME, "a\n"), (ME, "b\n")]
    assert holder.forgotten == [ME, ME]  # each new text: its addresses mean something else


def test_a_refused_process_has_facts_but_no_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "read_maps", lambda pid, root: "x\n")
    asked: list[ProcessFacts] = []

    def wants(facts: ProcessFacts) -> bool:
        asked.append(facts)
        return False

    c = Collection({"cpu": (FakeSource([], seen=[ME]), cpu_spec(19))}, wants=wants)
    observed: list[int] = []
    monkeypatch.setattr(c.symbolizer, "observe", lambda pid, text: observed.append(pid))
    c.poll(0)
    assert [f.pid for f in asked] == [ME] and observed == []
    assert c.processes.get(ME).exe_name  # the facts are kept all the same


def test_forget_reaches_every_per_process_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "read_maps", lambda pid, root: "x\n")
    holder = Holder()
    c = Collection({"cpu": (FakeSource([], seen=[ME]), cpu_spec(19))}, forgetters=(holder,))
    c.poll(0)
    forgot: list[str] = []
    monkeypatch.setattr(c.symbolizer, "forget", lambda pid: forgot.append("symbolizer"))
    monkeypatch.setattr(c.resolver, "forget", lambda pid: forgot.append("resolver"))
    c.forget(ME)
    assert sorted(forgot) == ["resolver", "symbolizer"] and holder.forgotten == [ME, ME]
    assert ME not in c.maps_seen and len(c.processes) == 0


def test_forget_gone_keeps_live_processes_and_those_with_samples(tmp_path: Path) -> None:
    for pid in (1, 2, 3):
        (tmp_path / str(pid)).mkdir()
    c = Collection({}, proc_root=str(tmp_path))
    for pid in (1, 2, 3):
        c.processes.observe(pid)
    (tmp_path / "2").rmdir()
    (tmp_path / "3").rmdir()
    assert c.forget_gone(keep={3}) == [2]
    assert len(c.processes) == 2


def test_profiles_and_resources_come_from_the_process_table() -> None:
    c = Collection({"cpu": (FakeSource([]), cpu_spec(19))})
    c.processes.observe(ME)
    profile = c.build("cpu", [sample(ME, 4)], 10, 20)
    (s,) = profile.samples
    assert s.labels["process"] == c.processes.get(ME).exe_name and s.values[0] == 4
    attrs = dict(c.resource("h", (("deployment.environment", "test"),))(s))
    assert attrs["host.name"] == "h" and attrs["process.pid"] == ME
    assert attrs["deployment.environment"] == "test"
    assert attrs["process.executable.name"] == c.processes.get(ME).exe_name


def test_prewarm_reads_the_commands_symbol_tables_so_its_first_process_hits_the_cache(
    tmp_path: Path,
) -> None:
    import shutil
    import subprocess
    import time

    sleep = shutil.which("sleep")
    assert sleep is not None
    c = Collection({})
    c.prewarm([*command_files([sleep]), str(tmp_path / "missing")])  # missing: skipped
    parsed = c.symbolizer.stats.table_cache_hits
    proc = subprocess.Popen([sleep, "5"])
    try:
        end = time.monotonic() + 5
        while "libc" not in Path(f"/proc/{proc.pid}/maps").read_text():  # mapped after the exec
            assert time.monotonic() < end, "sleep did not start"
            time.sleep(0.01)
        c.on_new_process(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    # sleep itself and libc came from the prewarmed tables, none parsed again
    assert c.symbolizer.stats.table_cache_hits - parsed >= 2
