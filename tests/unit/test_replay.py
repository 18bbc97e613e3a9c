"""Record and replay (agent/record/: capture.py, replaysource.py, replay.py):
a capture runs through resolve -> build without root or the original host,
and the committed captures of real programs replay to their folded goldens."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from agent import registry
from agent.cli import main
from agent.config import SourceOptions
from agent.errors import UsageError
from agent.exporters import folded
from agent.model import RawKey, RawSample, RawStack
from agent.pipeline.aggregate import Aggregator
from agent.pipeline.builder import build_profile
from agent.pipeline.resolve import StackResolver
from agent.record.capture import Capture
from agent.record.replay import replay
from agent.record.replaysource import ReplaySource, load
from agent.sources.base import SnapshotSource
from symbolizer import Symbolizer, parse_maps, read_maps

CAPTURES = Path(__file__).parents[1] / "captures"
KALLSYMS = "ffffffff81000000 T _stext\nffffffff81001000 T do_work\nffffffff81002000 T irq_exit\n"
KALLSYMS += "ffffffff81003000 T unused_symbol\n"


@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.iterdir() if p.is_dir()))
def test_a_committed_capture_replays_to_its_golden(name: str) -> None:
    """GIVEN a capture of a real recording (tests/captures/NAME/README.md)
    WHEN it is replayed THEN its folded stacks are the golden, as text."""
    profile = replay(CAPTURES / name)
    expected = (CAPTURES / name / "expected.folded").read_text()
    assert folded.encode(profile, sample_index=0) == expected


def test_hotsplit_capture_keeps_the_ground_truth_split() -> None:
    """The golden is not just whatever came out: hot_a has about 3x hot_b."""
    text = (CAPTURES / "hotsplit" / "expected.folded").read_text()
    totals = {"hot_a": 0, "hot_b": 0}
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        totals[stack.rsplit(";", 1)[1]] += int(count)
    assert 2.0 < totals["hot_a"] / totals["hot_b"] < 4.5


class FakeSource:
    """A SampleSource that drains what it was given, once."""

    def __init__(self, samples: list[RawSample]) -> None:
        self.samples = samples

    def add_targets(self, pids: Iterable[int]) -> None:
        pass

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        pass

    def drain(self) -> list[RawSample]:
        out, self.samples = self.samples, []
        return out

    def counters(self) -> dict[str, int]:
        return {"samples": 3}

    def close(self) -> None:
        pass


class FakeHeapSource(FakeSource):
    def live_heap(self) -> list[RawSample]:
        return [RawSample(RawKey(7, 7, "x", RawStack(user=(0x1000,))), (1,))]


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A small real process whose maps (sleep, libc, ld.so) get captured."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while "libc" not in Path(f"/proc/{proc.pid}/maps").read_text():  # mapped after the exec
            assert time.monotonic() < deadline, "sleep did not map libc"
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def libc_text(pid: int) -> tuple[int, int]:
    """[start, end) of the child's executable libc mapping."""
    maps = parse_maps(Path(f"/proc/{pid}/maps").read_text())
    entry = next(e for e in maps if e.is_exec and "libc" in e.path)
    return entry.start, entry.end


def test_a_capture_replays_as_the_live_pipeline_built_it(sleeper: int, tmp_path: Path) -> None:
    """GIVEN a real process's maps and samples in its libc and in the kernel,
    captured with the binaries, WHEN the capture is replayed THEN the profile
    is the one built from the live process and kallsyms; the capture is 0700
    and 0600, and its kallsyms holds only the symbols the samples hit."""
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(KALLSYMS)
    start, end = libc_text(sleeper)
    stacks = [
        RawStack(
            user=(start + 0x100, start + 0x2000), kernel=(0xFFFFFFFF81001010, 0xFFFFFFFF81002005)
        ),
        RawStack(user=(end - 0x10,), kernel_error=-14),
    ]
    samples = [
        RawSample(RawKey(sleeper, sleeper, "sleep", s), (n + 1,)) for n, s in enumerate(stacks)
    ]
    live = Symbolizer(kallsyms_path=str(kallsyms))
    capture = Capture(tmp_path / "cap", binaries=True)
    text = read_maps(sleeper)
    capture.note_maps(sleeper, text)
    live.observe(sleeper, maps_text=text)
    source = capture.wrap(FakeSource(list(samples)))
    aggregator = Aggregator()
    aggregator.add(source.drain())
    options = SourceOptions(frequency=49)
    capture.save("cpu", options, 5, 6, source.counters(), live, lambda pid: "c0ffee")

    def name(key: RawKey) -> str:
        return live.process_name(key.pid)

    spec = registry.spec_for("cpu", options)
    want = build_profile(
        aggregator.take(),
        spec,
        StackResolver(live),
        name,
        time_nanos=5,
        duration_nanos=6,
        container_id=lambda pid: "c0ffee",
    )
    got = replay(tmp_path / "cap")
    assert folded.encode(got, 0) == folded.encode(want, 0)
    assert "do_work" in folded.encode(got, 0)
    assert [s.labels for s in got.samples] == [s.labels for s in want.samples]
    assert got.period == want.period and got.time_nanos == 5 and got.duration_nanos == 6
    assert {s.labels.get("container_id") for s in got.samples} == {"c0ffee"}
    kept = (tmp_path / "cap" / "kallsyms").read_text().split()
    assert "do_work" in kept and "irq_exit" in kept and "unused_symbol" not in kept
    for path in (tmp_path / "cap").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_without_binaries_the_build_ids_are_kept_and_frames_stay_addresses(
    sleeper: int, tmp_path: Path
) -> None:
    start, _ = libc_text(sleeper)
    capture = Capture(tmp_path / "cap")
    capture.note_maps(sleeper, read_maps(sleeper))
    sample = RawSample(RawKey(sleeper, sleeper, "sleep", RawStack(user=(start + 0x100,))), (1,))
    capture.wrap(FakeSource([sample])).drain()
    capture.save("cpu", SourceOptions(), 0, 0, {}, Symbolizer(), lambda pid: "")
    rows = [
        json.loads(line)
        for line in (tmp_path / "cap" / "files.jsonl").read_text().split("\n")
        if line
    ]
    libc = next(r for r in rows if "libc" in r["path"])
    assert len(libc["build_id"]) == 40 and libc["stored"] == ""
    assert not (tmp_path / "cap" / "files").exists()
    assert (
        folded.encode(replay(tmp_path / "cap"), 0)
        == f"sleep;libc.so.6+0x{libc_offset(sleeper, start + 0x100):x} 1\n"
    )


def libc_offset(pid: int, address: int) -> int:
    entry = next(
        e for e in parse_maps(Path(f"/proc/{pid}/maps").read_text()) if e.start <= address < e.end
    )
    return address - entry.start + entry.offset


def test_each_distinct_maps_text_is_kept_once(tmp_path: Path) -> None:
    capture = Capture(tmp_path / "cap")
    for text in ("a\n", "a\n", "b\n", "b\n"):
        capture.note_maps(7, text)
    capture.save("cpu", SourceOptions(), 0, 0, {}, Symbolizer(), lambda pid: "")
    assert sorted(p.read_text() for p in (tmp_path / "cap" / "maps").iterdir()) == ["a\n", "b\n"]


def test_the_live_heap_is_captured_and_replayed_apart(tmp_path: Path) -> None:
    capture = Capture(tmp_path / "cap")
    source = capture.wrap(FakeHeapSource([]))
    assert isinstance(source, SnapshotSource)
    assert not isinstance(capture.wrap(FakeSource([])), SnapshotSource)
    source.live_heap()
    capture.save("cpu", SourceOptions(), 0, 0, {"samples": 3}, Symbolizer(), lambda pid: "")
    replayed = ReplaySource(load(tmp_path / "cap"))
    seen: list[int] = []
    replayed.add_targets([1])
    replayed.start()
    replayed.poll(0, seen.append)
    replayed.poll(0, seen.append)
    assert seen == [7]  # announced once
    assert replayed.drain() == [] and len(replayed.live_heap()) == 1
    assert replayed.counters() == {"samples": 3}
    replayed.close()


def test_the_replay_source_drains_once() -> None:
    captured = load(CAPTURES / "hotsplit")
    source = ReplaySource(captured)
    assert len(source.drain()) == len(captured.samples) > 0
    assert source.drain() == []


def test_a_stored_name_cannot_leave_the_capture(tmp_path: Path) -> None:
    """files.jsonl is input: a copy named ../x is looked for inside the capture."""
    outside = tmp_path / "secret"
    outside.write_bytes(b"\x7fELF not yours")
    cap = tmp_path / "cap"
    Capture(cap).save("cpu", SourceOptions(), 0, 0, {}, Symbolizer(), lambda pid: "")
    row = {"path": "/bin/x", "dev": "08:01", "inode": 5, "build_id": "", "size": 1}
    row["stored"] = "../secret"
    (cap / "files.jsonl").write_text(json.dumps(row) + "\n")
    entry = parse_maps("1000-2000 r-xp 00000000 08:01 5 /bin/x\n")[0]
    with pytest.raises(OSError):
        load(cap).open_file(1, entry)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: (d / "capture.json").write_text('{"version": 99}'), "version 99"),
        (lambda d: (d / "samples.jsonl").write_text("{not json\n"), "not a readable capture"),
        (lambda d: (d / "processes.jsonl").unlink(), "not a readable capture"),
    ],
)
def test_what_is_not_a_capture_is_a_usage_error(
    tmp_path: Path, edit: Callable[[Path], object], message: str
) -> None:
    cap = tmp_path / "cap"
    Capture(cap).save("cpu", SourceOptions(), 0, 0, {}, Symbolizer(), lambda pid: "")
    edit(cap)
    with pytest.raises(UsageError, match=message):
        load(cap)


def test_bpfprof_replay_writes_the_format_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.folded"
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", str(CAPTURES / "hotsplit"), "-o", str(out)])
    assert exit_info.value.code in (0, None)
    assert out.read_text() == (CAPTURES / "hotsplit" / "expected.folded").read_text()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_record_refuses_a_capture_dir_it_cannot_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SystemExit) as exit_info:
        main(["record", "--capture", str(shared), "-d", "1", "-o", str(tmp_path / "p.pb.gz")])
    assert exit_info.value.code != 0
    assert "--capture" in capsys.readouterr().err
