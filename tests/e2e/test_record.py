"""`bpfprof record -t cpu` end to end, checked against a program with known
proportions and read back by two independent parsers: ours and
`go tool pprof -raw`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.model import Profile, ValueType

pytestmark = [pytest.mark.bpf, pytest.mark.e2e]

ROUNDS = "700"  # about 3 s of CPU: ~300 samples at 99 Hz


def record(cmd: list[str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, "record", *args], capture_output=True, text=True, check=check, timeout=300
    )


@dataclass
class GoSample:
    values: list[int]
    functions: list[str]  # leaf first, one name per location (outermost inline)
    labels: str


def go_raw(path: Path) -> tuple[list[GoSample], str, str]:
    """Samples as `go tool pprof -raw` prints them, and its stderr."""
    proc = subprocess.run(
        ["go", "tool", "pprof", "-raw", str(path)], capture_output=True, text=True, check=True
    )
    head, _, rest = proc.stdout.partition("\nLocations\n")
    locations: dict[str, str] = {}
    for line in rest.split("\nMappings\n")[0].splitlines():
        # a location with no function (an address no symbol covers) goes by
        # its address, as our decoder names it
        m = re.match(r"\s*(\d+): (0x[0-9a-f]+)(?: M=\d+)?(?: (\S+))?", line)
        if m:
            locations[m.group(1)] = m.group(3) or hex(int(m.group(2), 16))
    samples: list[GoSample] = []
    body = head.split("Samples:\n", 1)[1].splitlines()
    types = body[0]
    for line in body[1:]:
        m = re.match(r"\s+([\d\s]+): ([\d ]+)$", line)
        if m:
            values = [int(v) for v in m.group(1).split()]
            samples.append(
                GoSample(values, [locations.get(i, "?") for i in m.group(2).split()], "")
            )
        elif samples and line.strip():
            samples[-1].labels += line.strip() + " "
    return samples, types, proc.stderr


def leaf_split(samples: list[GoSample], pid: int) -> tuple[Counter[str], int, int]:
    """Sample counts by leaf function, samples with `main`, all samples: of one pid."""
    leaves: Counter[str] = Counter()
    with_main = total = 0
    for s in samples:
        if f"pid:[{pid}]" not in s.labels:
            continue
        total += s.values[0]
        leaves[s.functions[0]] += s.values[0]
        with_main += s.values[0] * ("main" in s.functions)
    return leaves, with_main, total


def assert_split(leaves: Counter[str], with_main: int, total: int) -> None:
    a, b = leaves["hot_a"], leaves["hot_b"]
    n = a + b
    assert n > 0.8 * total, f"hot functions got {n} of {total} samples: {leaves}"
    share = a / n
    sigma = (0.75 * 0.25 / n) ** 0.5
    # 4 sigma of binomial noise, plus 3 points for the loop and call overhead
    assert abs(share - 0.75) < 4 * sigma + 0.03, f"hot_a share {share:.3f} over {n} samples"
    assert with_main >= 0.9 * total, f"main in {with_main} of {total} samples"


def assert_contract(profile: Profile) -> None:
    assert profile.sample_types == (ValueType("samples", "count"), ValueType("cpu", "nanoseconds"))
    assert profile.period_type == ValueType("cpu", "nanoseconds")
    assert profile.period == 1_000_000_000 // 99
    for s in profile.samples:
        assert set(s.labels) >= {"comm", "process"} and set(s.num_labels) >= {"pid", "tid"}
        assert s.values[1] == s.values[0] * profile.period


def test_record_command_ground_truth(
    bpfprof_cmd: list[str], hotsplit: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmd.pb.gz"
    proc = record(bpfprof_cmd, "-o", str(out), "--", str(hotsplit), ROUNDS)
    pid = int(re.search(r"ready (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert f"to {out}" in proc.stderr

    samples, types, stderr = go_raw(out)
    assert stderr == "", f"go tool pprof warned: {stderr}"
    assert types.split() == ["samples/count", "cpu/nanoseconds[dflt]"]
    assert_split(*leaf_split(samples, pid))

    profile = decode(out.read_bytes())
    assert_contract(profile)
    ours = Counter[str]()
    for s in profile.samples:
        if s.num_labels["pid"] == pid:
            ours[s.locations[0].display_name()] += s.values[0]
            assert s.labels["process"] == "hotsplit"
    assert ours == leaf_split(samples, pid)[0]  # both parsers agree exactly
    stack = next(s for s in profile.samples if s.locations[0].display_name() == "hot_a")
    names = [loc.display_name() for loc in stack.locations]
    assert names[:4] == ["hot_a", "work_a", "run", "main"]
    assert stack.locations[0].mapping is not None
    assert stack.locations[0].mapping.file == str(hotsplit)
    assert len(stack.locations[0].mapping.build_id) == 40


@pytest.fixture
def running_hotsplit(hotsplit: Path) -> Iterator[int]:
    proc = subprocess.Popen([str(hotsplit), "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    yield proc.pid
    proc.kill()
    proc.wait()


def test_record_pid(bpfprof_cmd: list[str], running_hotsplit: int, tmp_path: Path) -> None:
    out = tmp_path / "pid.pb.gz"
    record(bpfprof_cmd, "-p", str(running_hotsplit), "-d", "3", "-o", str(out))
    samples, _, stderr = go_raw(out)
    assert stderr == ""
    assert {re.search(r"pid:\[(\d+)\]", s.labels).group(1) for s in samples} == {  # type: ignore[union-attr]
        str(running_hotsplit)
    }
    assert_split(*leaf_split(samples, running_hotsplit))


def test_record_whole_system_folded(
    bpfprof_cmd: list[str], running_hotsplit: int, tmp_path: Path
) -> None:
    out = tmp_path / "all.folded"
    record(bpfprof_cmd, "-d", "3", "-o", str(out))
    lines = out.read_text().splitlines()
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        counts[stack.split(";")[-1]] += int(count)
        assert int(count) > 0
    assert counts["hot_a"] > counts["hot_b"] > 0
    # the root frame is the process, as in perf's and BCC's folded stacks
    assert any(line.startswith("hotsplit;") and ";main;run;work_a;hot_a " in line for line in lines)


def test_ctrl_c_still_writes_the_file(
    bpfprof_cmd: list[str], hotsplit: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int.pb.gz"
    proc = subprocess.Popen(
        [*bpfprof_cmd, "record", "-o", str(out), "--", str(hotsplit), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")  # running under the probes
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sum(s.values[0] for s in decode(out.read_bytes()).samples) > 0


ONE_LINE = re.compile(r"^bpfprof: error: [^\n]+\n$")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "999999999", "-d", "1"], "no process with pid 999999999"),
        (["-t", "bogus"], "Invalid value for '-t'"),
        (["-F", "0"], "between 1 and 10000"),
        (["-o", "x.json"], "cannot tell the output format"),
        (["--", "no-such-command-xyz"], "command not found"),
        (["-d", "nan"], "'nan' is not a finite number"),
        (["-d", "inf"], "'inf' is not a finite number"),
        # checked before attaching: the one line is the error, no "recording" line
        (["-d", "30", "-o", "/nonexistent/x.pb.gz"], "/nonexistent: no such directory"),
    ],
)
def test_bad_input_is_one_line(bpfprof_cmd: list[str], args: list[str], message: str) -> None:
    proc = record(bpfprof_cmd, *args, check=False)
    assert proc.returncode != 0
    assert ONE_LINE.match(proc.stderr), proc.stderr
    assert message in proc.stderr


def test_read_only_destination_fails_before_recording(
    bpfprof_cmd: list[str], tmp_path: Path
) -> None:
    """A read-only mount is found by a probe file before anything is attached,
    not after the 30 s the recording would take: stderr is the error alone,
    with no "recording" progress line before it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], check=True)
    try:
        proc = record(bpfprof_cmd, "-d", "30", "-o", str(ro / "x.pb.gz"), check=False)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert proc.returncode == 2
    assert ONE_LINE.match(proc.stderr), proc.stderr
    assert f"{ro}: Read-only file system" in proc.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root")
def test_without_root_is_one_line(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    """Root with every capability dropped, as a container may run it: the
    kernel would refuse BPF, so bpfprof must say so first. (Staying uid 0
    keeps the checkout readable, wherever CI cloned it.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV")}
    proc = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            *bpfprof_cmd,
            "record",
            "-d",
            "1",
            "-o",
            str(tmp_path / "x.pb.gz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 77
    assert ONE_LINE.match(proc.stderr) and "needs root" in proc.stderr


def test_children_of_the_command_are_followed(
    bpfprof_cmd: list[str], hotsplit: Path, tmp_path: Path
) -> None:
    """The shell forks the program (the `; true` keeps it from exec'ing it
    in place): the child is in the profile only if forks are followed."""
    out = tmp_path / "child.pb.gz"
    proc = record(bpfprof_cmd, "-o", str(out), "--", "sh", "-c", f"{hotsplit} 300; true")
    child = int(re.search(r"ready (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    profile = decode(out.read_bytes())
    pids = {s.num_labels["pid"] for s in profile.samples}
    assert child in pids
    leaves = Counter(
        s.locations[0].display_name()
        for s in profile.samples
        if s.num_labels["pid"] == child
        for _ in range(s.values[0])
    )
    assert leaves["hot_a"] > leaves["hot_b"] > 0
