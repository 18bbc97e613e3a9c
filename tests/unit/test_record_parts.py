"""The record runner's small parts: privileges, targets, the held command, output."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from agent.errors import TargetError, UsageError
from agent.exporters.output import write_profile
from agent.kernel.privileges import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, has_bpf_privileges
from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType
from agent.record.command import HeldCommand
from agent.record.recorder import require_pids, sampled_span


def status(caps: int) -> str:
    return f"Name:\tx\nCapEff:\t{caps:016x}\n"


@pytest.mark.parametrize(
    ("text", "euid", "ok"),
    [
        (status(0), 0, False),  # root with its capabilities dropped: BPF is refused
        (status(1 << CAP_SYS_ADMIN), 0, True),
        ("Name:\tx\n", 0, True),  # capabilities unknown: root is enough
        (status(0), 1000, False),
        (status(1 << CAP_SYS_ADMIN), 1000, True),
        (status(1 << CAP_BPF | 1 << CAP_PERFMON), 1000, True),
        (status(1 << CAP_BPF), 1000, False),
        ("Name:\tx\n", 1000, False),
    ],
)
def test_bpf_privileges(text: str, euid: int, ok: bool) -> None:
    assert has_bpf_privileges(text, euid) is ok


def test_require_pids(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    require_pids((42,), proc_root=str(tmp_path))
    with pytest.raises(TargetError, match="no process with pid 43"):
        require_pids((42, 43), proc_root=str(tmp_path))


def test_held_command_runs_only_when_released(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmd = HeldCommand(("sh", "-c", f"touch {marker}; exit 3"))
    time.sleep(0.2)
    assert not marker.exists() and cmd.poll() is None
    cmd.release()
    assert cmd.wait(10) == 3
    assert marker.exists()


def test_abandoned_command_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cmd = HeldCommand(("sh", "-c", f"touch {marker}"))
    cmd.abandon()
    assert cmd.status == 125 and not marker.exists()


def test_wait_times_out_on_a_running_command() -> None:
    cmd = HeldCommand(("sleep", "5"))
    cmd.release()
    assert cmd.wait(0.1) is None
    os.kill(cmd.pid, signal.SIGKILL)
    assert cmd.wait(5) == -signal.SIGKILL


def test_held_command_times_its_life_from_release_to_exit() -> None:
    cmd = HeldCommand(("sleep", "0.3"))
    time.sleep(0.3)  # held: not part of its life
    cmd.release()
    time.sleep(0.6)  # the recording loop looks late; the exit was stamped when it came
    assert cmd.poll() == 0
    assert cmd.released is not None and cmd.ended is not None
    assert 0.29 <= cmd.ended - cmd.released <= 0.4


def test_sampled_span_is_the_commands_life_or_the_sampling() -> None:
    assert sampled_span(10.0, 15.0, None) == (10.0, 15.0)
    cmd = HeldCommand(("true",))
    assert sampled_span(10.0, 15.0, cmd) == (10.0, 15.0)  # never released
    cmd.released, cmd.ended = 11.0, 12.5
    assert sampled_span(10.0, 15.0, cmd) == (11.0, 12.5)
    cmd.ended = None  # still running when -d or Ctrl-C ended the recording
    assert sampled_span(10.0, 15.0, cmd) == (11.0, 15.0)
    cmd.abandon()


def test_missing_command_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="command not found: no-such-cmd-xyz"):
        HeldCommand(("no-such-cmd-xyz",))


def small_profile() -> Profile:
    loc = Location(0x1100, Mapping(0x1000, 0x2000, 0, "/bin/x"), (Frame("main"),))
    return Profile(
        sample_types=(ValueType("samples", "count"),),
        samples=[Sample((loc,), (3,), {"comm": "x"}, {"pid": 1})],
    )


def test_write_folded_atomically(tmp_path: Path) -> None:
    out = tmp_path / "p.folded"
    n = write_profile(small_profile(), out, "folded")
    assert out.read_text() == "x;main 3\n" and n == len("x;main 3\n")
    assert [p.name for p in tmp_path.iterdir()] == ["p.folded"]


def test_write_into_missing_directory_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        write_profile(small_profile(), tmp_path / "no" / "p.pb.gz", "pprof")


def test_counters_become_one_warning_each_naming_what_to_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from agent.config import BpfLimits, RecordConfig
    from agent.record.recorder import report_counters

    counters = {"samples": 100, "map_full": 2, "kernel_collision": 3, "targets_full": 1}
    config = RecordConfig(limits=BpfLimits(max_entries=512))
    with caplog.at_level(logging.WARNING, "bpfprof.record"):
        report_counters(counters, config)
        alloc = RecordConfig(profile_type="alloc", pids=(1,))
        report_counters({"sample_lost": 5, "live_full": 6, "map_full": 0}, alloc)
    assert caplog.messages == [
        "2 samples dropped: the counts map was full (raise --max-entries, now 512)",
        "3 kernel stacks lost to stack-map collisions (raise --stack-storage-size, now 16384)",
        "1 child processes not followed: the target set was full (8192)",
        "6 sampled allocations left out of inuse_*: the live table was full",
        "5 allocation samples or frees dropped: the ring buffer was full (raise --alloc-rate)",
    ]


def test_no_python_frames_reaches_every_recorded_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import agent.record.recorder as recorder
    from agent.cli import cli

    seen = []
    monkeypatch.setattr(recorder, "record", lambda config, capture: seen.append(config) or 0)
    for flag, want in (("--no-python-frames", False), ("--python-frames", True), (None, True)):
        args = ["record", "-o", "x.pb.gz", *([flag] if flag else []), "--", "true"]
        done = CliRunner().invoke(cli, args)
        assert done.exit_code == 0, done.output
        assert seen[-1].python is want
        assert seen[-1].source_options().python is want


def test_processes_that_exited_unread_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    from agent.record.recorder import report_exited

    with caplog.at_level(logging.WARNING, "bpfprof.record"):
        report_exited(0)
        report_exited(437)
    assert caplog.messages == [
        "437 processes exited before their memory maps or files could be read: "
        "their frames show as addresses"
    ]
