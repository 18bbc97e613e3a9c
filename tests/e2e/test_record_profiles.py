"""`bpfprof record -t offcpu|lock|alloc` end to end: the files load in
`go tool pprof` without warnings, carry the contract's sample types, and
hold what the ground-truth programs measured themselves. The programs are
built without frame pointers: whole stacks come from the CFI walker."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from agent.exporters.pprof import decode
from agent.model import Sample
from agent.sources.lock import plain_name
from tests.conftest import PROGRAMS, compile_c
from tests.e2e.test_record import go_raw

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("go") is None, reason="needs `go` for `go tool pprof`"),
]

NO_FP = ("-O2", "-g", "-fomit-frame-pointer", "-pthread")


def build(tmp_path: Path, name: str) -> Path:
    return compile_c(PROGRAMS / f"{name}.c", tmp_path / name, *NO_FP)


def names(sample: Sample) -> list[str]:
    """Function names of a sample's stack, leaf first, inlined frames too."""
    return [plain_name(f.function) for loc in sample.locations for f in loc.frames]


def above(stack: list[str], caller: str, callees: set[str]) -> bool:
    """Whether `caller` is in the stack (leaf first) above one of `callees`."""
    inner = [i for i, n in enumerate(stack) if n in callees]
    return bool(inner) and caller in stack[min(inner) + 1 :]


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


def record_running(cmd: list[str], prog_argv: list[str], out: Path, *args: str) -> str:
    """Record `-p PID` of a ground-truth program started first and let go
    once the recording runs (its unwind tables are loaded by then); returns
    the line it printed when done. The program is stopped after the
    recording (an allocation profile is taken with the hoard still live)."""
    prog = subprocess.Popen(prog_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert prog.stdin is not None and prog.stdout is not None
    try:
        pid = prog.stdout.readline().split()[1]
        rec = subprocess.Popen(
            [*cmd, "record", "-p", pid, "-o", str(out), *args], stderr=subprocess.PIPE, text=True
        )
        assert rec.stderr is not None
        assert "recording" in rec.stderr.readline()
        prog.stdin.write("go\n")
        prog.stdin.flush()
        last = prog.stdout.readline()
        rec.send_signal(signal.SIGINT)
        assert rec.wait(timeout=120) == 0, rec.stderr.read()
    finally:
        prog.kill()
        prog.wait()
    return last


def types_line(path: Path) -> str:
    samples, types, stderr = go_raw(path)
    assert stderr == "", stderr  # loads without a warning
    assert samples
    return types


def test_record_offcpu(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "sleeper")
    out = tmp_path / "offcpu.pb.gz"
    last = record_running(bpfprof_cmd, [str(exe), "10", "30"], out, "-t", "offcpu")
    slept = int(last.split()[1])
    assert "offcpu/nanoseconds" in types_line(out)
    profile = decode(out.read_bytes())
    in_sleepy = sum(
        s.values[0]
        for s in profile.samples
        if above(n := names(s), "nap", {"nanosleep", "clock_nanosleep"})
        and above(n, "sleepy", {"nap"})
        and above(n, "main", {"sleepy"})
    )
    total = sum(s.values[0] for s in profile.samples)
    assert 0.97 * slept <= total <= 1.05 * slept, (total, slept)
    assert in_sleepy >= 0.9 * total, (in_sleepy, total)


def test_record_lock(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "lockstorm")
    out = tmp_path / "lock.pb.gz"
    # every wait takes stacks (--wait-sampling 1): the totals are exact
    args = ("-t", "lock", "--wait-sampling", "1")
    last = record_running(bpfprof_cmd, [str(exe), "1000", "4", "20000"], out, *args)
    words = last.split()  # waited_ns N locks N idle_ns N
    waited, idle = int(words[1]), int(words[5])
    line = types_line(out)
    assert "contentions/count" in line and "delay/nanoseconds" in line
    profile = decode(out.read_bytes())
    assert profile.period_type is not None and profile.period_type.type == "contentions"
    mutex = [s for s in profile.samples if s.labels["lock_kind"] == "mutex"]
    waits = {"pthread_mutex_lock", "__pthread_mutex_lock", "__lll_lock_wait"}
    through = [s for s in mutex if above(names(s), "contend", waits)]
    delay = sum(s.values[1] for s in through)
    # contend() above libc's mutex wait in nearly all of the mutex delay
    assert delay >= 0.9 * sum(s.values[1] for s in mutex), [names(s) for s in mutex]
    assert 0.85 * waited <= delay <= 1.05 * waited, (delay, waited)
    # idle_wait()'s condition wait, as long as the run, is not contention
    in_idle = sum(s.values[1] for s in profile.samples if "idle_wait" in names(s))
    assert in_idle < 0.1 * idle, (in_idle, idle)


def test_record_alloc_of_a_running_process(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    exe = build(tmp_path, "allocsplit")
    out = tmp_path / "alloc.pb.gz"
    last = record_running(bpfprof_cmd, [str(exe), "8192", "4096"], out, "-t", "alloc")
    assert last.startswith("done")  # and the hoard is still allocated when it stops
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
    whole = sum(s.values[1] for s in profile.samples if names(s)[:3] in SITES)
    assert whole >= 0.9 * sum(s.values[1] for s in profile.samples)


# allocsplit's call sites of malloc with their callers, leaf first
SITES = (["churn", "run", "main"], ["hoard", "run", "main"])


def test_record_alloc_follows_the_commands_children(bpfprof_cmd: list[str], tmp_path: Path) -> None:
    """A COMMAND's children get probes too: here a shell forks the program,
    whose call sites then show their 3:1 split; without following, only the
    shell's own few allocations would be seen."""
    exe = build(tmp_path, "allocsplit")
    out = tmp_path / "alloc.folded"
    # `; true` keeps the shell from exec'ing the pipeline's last command in
    # place; allocsplit starts when `sleep 1` closes its stdin, once the
    # fork's probes are attached (allocations before that are not seen)
    script = f"sleep 1 | {exe} 8192 4096; true"
    args = ("-t", "alloc", "--alloc-rate", "65536", "--", "sh", "-c", script)
    proc, last = record_command(bpfprof_cmd, out, *args)
    assert last.startswith("done")
    by_leaf: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        leaf = stack.split(";")[-1]
        by_leaf[leaf] = by_leaf.get(leaf, 0) + int(count)
    assert "churn" in by_leaf and "hoard" in by_leaf, (by_leaf, proc.stderr)
    assert 2.4 < by_leaf["churn"] / by_leaf["hoard"] < 3.75, by_leaf


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
    whole = total = 0
    for line in out.read_text().splitlines():  # folded: the first sample type
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        by_leaf[frames[-1]] = by_leaf.get(frames[-1], 0) + int(count)
        total += int(count)
        whole += int(count) if frames[-3:][::-1] in SITES else 0
    # alloc_objects: churn allocates 3 blocks for each of hoard's
    assert 2.4 < by_leaf["churn"] / by_leaf["hoard"] < 3.75, by_leaf
    # The command's tables are built before it is released, but they are
    # loaded for its pid when its first sampled allocation announces it;
    # this program allocates at full speed from its first instruction, so
    # the allocations sampled before that (10-20% of this short run here)
    # have frame-pointer stacks. Only the effect is checked here;
    # tests/bpf checks the share with the tables loaded.
    assert 0 < whole <= total, (whole, total, by_leaf)
