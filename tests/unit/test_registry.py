"""The profile-type registry is the one place a type is described: a type
registered here (a plain entry with a fake source) is a `-t` choice, a
`[profiles.NAME]` config section, and its counters are accounted by both
drivers, with nothing else edited."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import agent.record.recorder
from agent import registry
from agent.cli import main
from agent.config import BpfLimits, RecordConfig, SourceOptions
from agent.daemon import runner
from agent.daemon.runconfig import load
from agent.daemon.telemetry import SelfUsage
from agent.errors import ConfigError, UsageError
from agent.model import RawKey, RawSample, RawStack
from agent.pipeline.builder import ProfileSpec, offcpu_spec
from agent.registry import LOST_SAMPLES, CounterMeaning, ProfileType, Setting, create_source
from agent.sources.base import SampleSource


@dataclass
class FakeSource:
    """Gives one sample per drain and drops one page fault per drain."""

    options: SourceOptions
    drained: int = 0

    def add_targets(self, pids: Iterable[int]) -> None:
        pass

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        pass

    def drain(self) -> list[RawSample]:
        self.drained += 1
        return [RawSample(RawKey(1, 1, "fake", RawStack()), (5,))]

    def counters(self) -> dict[str, int]:
        return {"faults_lost": self.drained}

    def close(self) -> None:
        pass


made: list[FakeSource] = []


def fake_source(options: SourceOptions, _command: tuple[str, ...]) -> SampleSource:
    made.append(FakeSource(options))
    return made[-1]


def fake_spec(_options: SourceOptions) -> ProfileSpec:
    return offcpu_spec()


FAULTS_LOST = CounterMeaning(
    "faults_lost", "page faults not seen", LOST_SAMPLES, "--frequency", "profiles.faults.every"
)
FAULTS = ProfileType(
    name="faults",
    settings=(Setting("every", "frequency", "int", 7, 1, 100),),
    source=fake_source,
    spec=fake_spec,
    counters=(FAULTS_LOST,),
)


@pytest.fixture
def faults() -> Iterator[ProfileType]:
    registry.register(FAULTS)
    made.clear()
    try:
        yield FAULTS
    finally:
        registry.unregister("faults")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f'status_file = "{tmp_path / "status.json"}"\n[output]\ndir = "{tmp_path / "out"}"\n' + text
    )
    return path


def test_a_registered_type_is_a_cli_choice(
    faults: ProfileType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    assert "[cpu|offcpu|alloc|lock|faults]" in capsys.readouterr().out
    seen: list[RecordConfig] = []
    monkeypatch.setattr(agent.record.recorder, "record", lambda c, *_: seen.append(c) or 0)
    with pytest.raises(SystemExit) as e:
        main(["record", "-t", "faults", "-p", "1"])
    assert e.value.code == 0 and seen[0].profile_type == "faults"


def test_an_unregistered_type_is_refused_by_cli_and_record_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["record", "-t", "faults"])
    assert e.value.code != 0 and "'faults' is not one of" in capsys.readouterr().err
    with pytest.raises(UsageError, match="not supported"):
        RecordConfig(profile_type="faults")


def test_a_registered_type_is_a_config_section(faults: ProfileType, tmp_path: Path) -> None:
    c = load(write(tmp_path, "[profiles.faults]\nenabled = true\nevery = 3\n"), env={})
    assert dict(c.profiles)["faults"] == (("every", 3),)
    assert faults.options(c.type_settings("faults"), c.limits).frequency == 3
    with pytest.raises(ConfigError, match=r"profiles.faults.every: must be at most 100"):
        load(write(tmp_path, "[profiles.faults]\nevery = 101\n"), env={})
    assert create_source("faults", SourceOptions()) is made[-1]


def test_the_agent_runs_a_registered_type_and_accounts_its_counters(
    faults: ProfileType, tmp_path: Path
) -> None:
    text = "[profiles.cpu]\nenabled = false\n[profiles.faults]\nenabled = true\n"
    session = runner.Session(load(write(tmp_path, text), env={}), SelfUsage())
    session.start()
    session.report()
    session.finish()
    assert made[-1].options.frequency == 7  # the setting's default reached the source
    assert len(list((tmp_path / "out").glob("*-faults.pb.gz"))) == 2
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["profiles"] == "faults"
    assert status["totals"]["lost_samples"] == 3  # one per drain (the flush drains twice)


def test_record_warns_about_a_registered_type_s_counters(
    faults: ProfileType, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "bpfprof.record"):
        agent.record.recorder.report_counters(
            {"faults_lost": 4, "map_full": 9}, RecordConfig(profile_type="faults", pids=(1,))
        )
    # map_full is not one of this type's counters: it cannot have lost anything
    assert caplog.messages == ["4 page faults not seen (raise --frequency)"]


def test_every_counter_has_one_meaning_and_loss_kind() -> None:
    for t in registry.TYPES.values():
        names = [c.name for c in t.counters]
        assert len(names) == len(set(names)), t.name
        for c in t.counters:
            assert c.account in ("", *registry.LOSS_KINDS)
            assert registry.counter_meanings()[c.name] == c
            assert not c.limit or hasattr(BpfLimits, c.limit)


def test_every_setting_maps_to_an_option_and_its_default_is_in_bounds() -> None:
    for t in registry.TYPES.values():
        for s in t.settings:
            assert hasattr(SourceOptions, s.field) and hasattr(RecordConfig, s.field)
            if s.low is not None and s.high is not None:
                assert s.low <= s.default <= s.high, (t.name, s.key)
                assert s.low <= getattr(RecordConfig, s.field) <= s.high, (t.name, s.field)


def test_registering_a_name_twice_is_refused(faults: ProfileType) -> None:
    with pytest.raises(ValueError, match="registered already"):
        registry.register(faults)
    with pytest.raises(ValueError, match="unknown profile type"):
        registry.get("wall")


def test_a_type_costly_host_wide_needs_a_target_or_all_processes(
    faults: ProfileType, caplog: pytest.LogCaptureFixture
) -> None:
    registry.unregister("faults")
    registry.register(replace(faults, host_wide="faults need a target", host_wide_cost="slow"))
    with pytest.raises(UsageError, match=r"^faults need a target$"):
        RecordConfig(profile_type="faults")
    config = RecordConfig(profile_type="faults", all_processes=True)
    with caplog.at_level(logging.WARNING, "bpfprof.record"):
        agent.record.recorder.warn_all_processes(config)
        agent.record.recorder.warn_all_processes(
            RecordConfig(profile_type="cpu", all_processes=True)
        )
    assert caplog.messages == ["slow"]


@pytest.mark.parametrize("limit", registry.LIMITS, ids=lambda lim: lim.key)
def test_a_map_size_has_the_same_bounds_as_a_flag_and_as_a_config_key(
    limit: registry.Limit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["record", limit.flag, str(limit.high + 1), "-p", "1"])
    assert e.value.code == 2 and f"{limit.low}<=x<={limit.high}" in capsys.readouterr().err
    section, key = limit.key.split(".")
    with pytest.raises(ConfigError, match=f"{limit.key}: must be at most {limit.high}"):
        load(write(tmp_path, f"[{section}]\n{key} = {limit.high + 1}\n"), env={})
    c = load(write(tmp_path, f"[{section}]\n{key} = {limit.low}\n"), env={})
    assert getattr(c.limits, limit.field) == limit.low
    assert getattr(BpfLimits(), limit.field) == limit.default
