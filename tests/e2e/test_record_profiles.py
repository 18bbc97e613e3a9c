"""`bpfprof record -t offcpu|lock|alloc` end to end: the files load in
`go tool pprof` without warnings, carry the contract's sample types, and
hold what the ground-truth programs measured themselves."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from tests.conftest import PROGRAMS, compile_c
from tests.e2e.test_record import go_raw

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("go") is None, reason="needs `go` for `go tool pprof`"),
]

FP = ("-O1", "-g", "-fno-omit-frame-pointer", "-pthread")


def build(tmp_path: Path, name: str) -> Path:
    return compile_c(PROGRAMS / f"{name}.c", tmp_path / name, *FP)


def record_command(
    cmd: list[str], out: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Record a COMMAND (stdin empty: the program starts at once); returns
    the run and what the program printed last."""
    proc = subprocess.run(
        [*cmd, "record", "-o", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, proc.stdout.strip().splitlines()[-1]


def types_line(path: Path) -> str:
    samples, types, stderr = go_raw(path)
    assert stderr == "", stderr  # loads without a warning
    assert samples
    return types


def test_record_offcpu(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "sleeper")
    out = tmp_path / "offcpu.pb.gz"
    _, last = record_command(bpfprof_cmd, out, "-t", "offcpu", "--", str(exe), "10", "30")
    slept = int(last.split()[1])
    assert "offcpu/nanoseconds" in types_line(out)
    profile = decode(out.read_bytes())
    in_sleepy = sum(
        s.values[0]
        for s in profile.samples
        if any(loc.display_name() == "sleepy" for loc in s.locations)
    )
    total = sum(s.values[0] for s in profile.samples)
    assert 0.97 * slept <= total <= 1.05 * slept, (total, slept)
    assert in_sleepy >= 0.9 * total, (in_sleepy, total)


def test_record_lock(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "lockstorm")
    out = tmp_path / "lock.pb.gz"
    args = ("-t", "lock", "--", str(exe), "1000", "4", "20000")
    _, last = record_command(bpfprof_cmd, out, *args)
    waited = int(last.split()[1])
    line = types_line(out)
    assert "contentions/count" in line and "delay/nanoseconds" in line
    profile = decode(out.read_bytes())
    assert profile.period_type is not None and profile.period_type.type == "contentions"
    through = [
        s for s in profile.samples if any(loc.display_name() == "contend" for loc in s.locations)
    ]
    assert {s.labels["lock_kind"] for s in through} <= {"mutex", "kernel"}
    delay = sum(s.values[1] for s in through)
    assert 0.85 * waited <= delay <= 1.05 * waited, (delay, waited)


def test_record_alloc_of_a_running_process(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "allocsplit")
    out = tmp_path / "alloc.pb.gz"
    prog = subprocess.Popen(
        [str(exe), "8192", "4096"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert prog.stdin is not None and prog.stdout is not None
    try:
        pid = prog.stdout.readline().split()[1]
        rec = subprocess.Popen(
            [*bpfprof_cmd, "record", "-t", "alloc", "-p", pid, "-o", str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert rec.stderr is not None
        assert "recording alloc" in rec.stderr.readline()
        prog.stdin.write("go\n")
        prog.stdin.flush()
        assert prog.stdout.readline().startswith("done")
        rec.send_signal(signal.SIGINT)  # the hoard is still allocated now
        assert rec.wait(timeout=120) == 0, rec.stderr.read()
    finally:
        prog.kill()
        prog.wait()
    line = types_line(out)
    for t in (
        "alloc_objects/count",
        "alloc_space/bytes",
        "inuse_objects/count",
        "inuse_space/bytes",
    ):
        assert t in line
    profile = decode(out.read_bytes())
    assert profile.period == 512 * 1024

    def total(name: str, index: int) -> int:
        return sum(
            s.values[index]
            for s in profile.samples
            if s.locations and s.locations[0].display_name() == name
        )

    inuse = sum(s.values[3] for s in profile.samples)
    assert total("hoard", 3) == inuse > 0  # only the hoard is still allocated
    assert total("churn", 3) == 0 and total("churn", 1) > total("hoard", 1)


def test_alloc_without_a_target_asks_for_the_flag(bpfprof_cmd: list[str]) -> None:
    proc = subprocess.run(
        [*bpfprof_cmd, "record", "-t", "alloc", "-d", "1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("bpfprof: error:") and "--all-processes" in proc.stderr


def test_record_alloc_of_a_command(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    """A COMMAND is probed before it runs: its executable and the libraries
    ldd names, not the held child's image."""
    exe = build(tmp_path, "allocsplit")
    out = tmp_path / "alloc.folded"
    args = ("-t", "alloc", "--alloc-rate", "65536", "--", str(exe), "8192", "4096")
    _, last = record_command(bpfprof_cmd, out, *args)
    assert last.startswith("done")
    by_leaf: dict[str, int] = {}
    for line in out.read_text().splitlines():  # folded: the first sample type
        stack, count = line.rsplit(" ", 1)
        leaf = stack.split(";")[-1]
        by_leaf[leaf] = by_leaf.get(leaf, 0) + int(count)
    # alloc_objects: churn allocates 3 blocks for each of hoard's
    assert 2.4 < by_leaf["churn"] / by_leaf["hoard"] < 3.75, by_leaf
