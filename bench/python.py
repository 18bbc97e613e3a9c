"""`bench/run.py python`: the cost and the truth of Python frames beside py-spy.

The workload (bench/python_workload.py, under the host's /usr/bin/python3)
splits the same loop 3:1 between hot_a and hot_b and times its own rounds.
It runs alone; under `bpfprof record -t cpu -F 99 -p PID` (Python frames
on, the default); under the same with `--no-python-frames` (when the
flag exists); under `py-spy record -r 99 -f raw -p PID` (which pauses the
process for each sample, its default) and `py-spy ... --nonblocking`.
Each tool is started on the held workload's pid, the workload released
once the tool prints its ready line, and the tool stopped with SIGINT when
the workload is done. The modes are interleaved, the order rotating each
repetition; the best throughput of the repetitions is kept (the host is
shared: noise only ever adds time).

Reported per mode: the workload's loop iterations per wall second and per
CPU second (blind to time stopped by py-spy or spent waiting for a CPU),
each as a slowdown against alone's best; the run time of bpfprof's
perf-event programs from the kernel's statistics (BPF_ENABLE_STATS), over
the workload's wall time (a floor for bpfprof's cost that a busy host
does not blur) and over the workload's samples (it includes the programs'
runs for other processes, which return at the pid filter); hot_a's share
of hot_a+hot_b samples (by the innermost of the two in each stack; truth
75 %); the time from starting the tool to its ready line; the tool's own
CPU while the workload ran.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from bench import bpfstats, procfs
from bench.cpu import commit, machine
from bench.trial import BenchError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = "/usr/bin/python3"  # the host's CPython 3.11; `python3` on PATH may be another build
WORKLOAD = HERE / "python_workload.py"
BPFPROF = str(REPO / ".venv" / "bin" / "bpfprof")
PYSPY = str(REPO / ".venv" / "bin" / "py-spy")
PAIR = ("hot_a", "hot_b")
TRUTH = 0.75
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 120.0
ALONE = "alone"
NO_PYTHON_FLAG = "--no-python-frames"


@dataclass(frozen=True)
class Split:
    """Samples of the workload by the innermost of hot_a/hot_b in their stack."""

    a: int = 0
    b: int = 0
    total: int = 0  # every sample of the workload, with or without the pair

    def __add__(self, other: Split) -> Split:
        return Split(self.a + other.a, self.b + other.b, self.total + other.total)

    @property
    def share(self) -> float | None:
        return self.a / (self.a + self.b) if self.a + self.b else None


@dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[int, Path], list[str]]
    ready: str  # a line the tool prints (stdout or stderr) once attached
    split: Callable[[Path], Split]  # read from the tool's output file


@dataclass
class Run:
    mode: str
    rep: int
    iterations: int
    wall_s: float
    cpu_s: float
    window_iterations: int
    window_s: float  # the fastest window of consecutive rounds
    load1: float
    attach_s: float | None = None
    tool_cpu_s: float | None = None  # the tool's own CPU while the workload ran
    bpf_ns: int | None = None  # bpfprof's perf-event programs, while the workload ran
    bpf_runs: int | None = None
    split: Split = field(default_factory=Split)

    def speed(self, measure: str) -> float:
        """Loop iterations per second, by one of MEASURES."""
        if measure == "window":
            return self.window_iterations / self.window_s
        return self.iterations / (self.cpu_s if measure == "cpu" else self.wall_s)

    @property
    def bpf_share(self) -> float | None:
        """BPF run time over the workload's wall time."""
        return None if self.bpf_ns is None else self.bpf_ns / (self.wall_s * 1e9)


# Loop iterations per second measured three ways: the CPU second is blind
# to time the workload spent stopped (py-spy's pauses) or waiting for a CPU
# (a busy host), and includes the interrupts that run BPF on its CPU.
MEASURES = {
    "wall": "M iterations per wall second, whole run",
    "window": "M iterations per wall second, fastest ~0.2 s window",
    "cpu": "M iterations per CPU second of the workload",
}


def innermost(names: list[str]) -> str | None:
    """The innermost of the pair in a stack given leaf first."""
    return next((n for n in names if n in PAIR), None)


def tally(stacks: list[tuple[list[str], int]]) -> Split:
    """(names leaf first, count) pairs as a Split."""
    a = b = total = 0
    for names, count in stacks:
        hit = innermost(names)
        a += count if hit == PAIR[0] else 0
        b += count if hit == PAIR[1] else 0
        total += count
    return Split(a, b, total)


def pprof_split(path: Path) -> Split:
    """bpfprof's pprof: Python frames are the locations of kind cpython."""
    from agent.exporters.pprof import decode
    from agent.model import CPYTHON

    profile = decode(path.read_bytes())
    idx = profile.sample_index("samples")
    return tally(
        [
            ([f.function for loc in s.locations if loc.kind == CPYTHON for f in loc.frames], v)
            for s in profile.samples
            if (v := s.values[idx])
        ]
    )


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (folded) output, root first: `name (file:line);... COUNT`."""
    stacks = []
    for line in text.splitlines():
        frames, sep, count = line.rpartition(" ")
        if sep and count.isdigit():
            names = [f.split(" (", 1)[0] for f in frames.split(";")]
            stacks.append((names[::-1], int(count)))
    return stacks


def pyspy_split(path: Path) -> Split:
    return tally(parse_raw(path.read_text(errors="replace")))


def bpfprof_command(tree: Path | None) -> list[str]:
    """The venv's bpfprof, or `tree`'s code (a clean clone at a commit)
    under the venv's interpreter, as bench/cpu.py's --tree."""
    if tree is None:
        return [BPFPROF]
    if not (tree / "agent" / "cli.py").is_file():
        raise BenchError(f"{tree} is not a bpfprof source tree (no agent/cli.py)")
    os.environ["PYTHONPATH"] = str(tree.resolve())
    return [sys.executable, "-P", "-c", "import sys; from agent.cli import main; sys.exit(main())"]


def bpfprof(command: list[str], *extra: str) -> Tool:
    return Tool(
        " ".join(["bpfprof", *extra]) if extra else "bpfprof",
        lambda pid, tmp: [
            *[*command, "record", "-t", "cpu", "-F", "99", "-p", str(pid)],
            *["-o", str(tmp / "out.pb.gz"), *extra],
        ],
        "recording",
        lambda tmp: pprof_split(tmp / "out.pb.gz"),
    )


def pyspy(*extra: str) -> Tool:
    return Tool(
        " ".join(["py-spy", *extra]),
        lambda pid, tmp: [
            *[PYSPY, "record", "-p", str(pid), "-r", "99", "-f", "raw"],
            *["-o", str(tmp / "out.txt"), *extra],
        ],
        "Sampling process",
        lambda tmp: pyspy_split(tmp / "out.txt"),
    )


def has_flag(command: list[str], flag: str) -> bool:
    done = subprocess.run([*command, "record", "--help"], capture_output=True, text=True)
    return flag in done.stdout


def tools(command: list[str], pyspy_nonblocking: bool) -> tuple[list[Tool], list[str]]:
    """The tools to run, and notes on rows left out."""
    chosen, notes = [bpfprof(command)], []
    if has_flag(command, NO_PYTHON_FLAG):
        chosen.append(bpfprof(command, NO_PYTHON_FLAG))
    else:
        notes.append(f"`bpfprof record` has no {NO_PYTHON_FLAG} yet: that row is left out")
    if not Path(PYSPY).exists():
        notes.append(f"{PYSPY} not found (`.venv/bin/pip install py-spy`): its rows are left out")
        return chosen, notes
    chosen.append(pyspy())
    if pyspy_nonblocking:
        chosen.append(pyspy("--nonblocking"))
    return chosen, notes


class Workload:
    """The workload, started and waiting for the word to run its rounds."""

    def __init__(self, rounds: int) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(WORKLOAD), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            self.kill()
            raise BenchError(f"the workload did not start: {line!r}")
        self.pid = int(line[1])

    def run(self) -> tuple[int, float, float, int, float]:
        """Release it and wait for its figures: iterations, wall s, CPU s,
        iterations of a window, the fastest window's wall s."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.close()
        out = self.proc.stdout.readline().split()
        if self.proc.wait() != 0 or out[:1] != ["done"]:
            raise BenchError(f"the workload failed (status {self.proc.returncode}): {out!r}")
        return int(out[1]), float(out[2]), float(out[3]), int(out[4]), float(out[5])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Attached:
    """A tool started on a pid; its stdout and stderr drained by a thread,
    which notes when the ready line came."""

    def __init__(self, tool: Tool, pid: int, tmp: Path) -> None:
        self.tool = tool
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            tool.argv(pid, tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.ready_at: float | None = None
        self._seen = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.ready_at is None and self.tool.ready in line:
                self.ready_at = time.monotonic()
                self._seen.set()
        self._seen.set()

    def wait_ready(self) -> float:
        """Seconds from start to the ready line."""
        if not self._seen.wait(READY_TIMEOUT) or self.ready_at is None:
            raise BenchError(f"{self.tool.name} did not attach: {self.tail()}")
        return self.ready_at - self.started

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            status = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"{self.tool.name} did not stop on SIGINT") from None
        if status != 0:
            raise BenchError(f"{self.tool.name} exited with status {status}: {self.tail()}")

    def tail(self) -> str:
        return self.lines[-1] if self.lines else "(no output)"


def tool_time(pid: int) -> tuple[float, int, int]:
    """A tool's own CPU seconds, and the run time (ns) and runs of the
    perf-event BPF programs it holds (a tail-called program's time counts in
    its caller's)."""
    progs = [p for p in procfs.snapshot(pid).progs if p.prog_type == procfs.PROG_TYPE_PERF_EVENT]
    runtime, runs = sum(p.run_time_ns for p in progs), sum(p.run_cnt for p in progs)
    return procfs.cpu_seconds(pid), runtime, runs


def run_alone(rounds: int, rep: int) -> Run:
    load = os.getloadavg()[0]
    work = Workload(rounds)
    try:
        return Run(ALONE, rep, *work.run(), load)
    finally:
        work.kill()


def run_under(tool: Tool, rounds: int, rep: int) -> Run:
    load = os.getloadavg()[0]
    work = Workload(rounds)
    with tempfile.TemporaryDirectory(prefix="bpfprof-bench-") as name:
        tmp = Path(name)
        attached = Attached(tool, work.pid, tmp)
        try:
            attach = attached.wait_ready()
            cpu0, bpf0, runs0 = tool_time(attached.proc.pid)
            figures = work.run()
            cpu1, bpf1, runs1 = tool_time(attached.proc.pid)
            attached.stop()
        finally:
            work.kill()
            if attached.proc.poll() is None:
                attached.proc.kill()
                attached.proc.wait()
        run = Run(tool.name, rep, *figures, load, attach, cpu1 - cpu0)
        if runs1 > runs0:
            run.bpf_ns, run.bpf_runs = bpf1 - bpf0, runs1 - runs0
        run.split = tool.split(tmp)
    return run


def run_all(args: argparse.Namespace, chosen: list[Tool]) -> list[Run]:
    by_name = {t.name: t for t in chosen}
    modes = [ALONE, *by_name]

    def one(mode: str, rep: int) -> Run:
        if mode == ALONE:
            return run_alone(args.rounds, rep)
        return run_under(by_name[mode], args.rounds, rep)

    if not args.no_warmup:
        print("warm-up round (not measured) ...", file=sys.stderr)
        for mode in modes:
            one(mode, -1)
    runs = []
    for rep in range(args.repeat):
        for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
            run = one(mode, rep)
            print(progress(run), file=sys.stderr)
            runs.append(run)
    return runs


def progress(run: Run) -> str:
    share = run.split.share
    parts = [
        f"{run.mode:>28} rep {run.rep}: {run.speed('wall') / 1e6:6.2f} M iter/s",
        f"window {run.speed('window') / 1e6:6.2f}",
        f"CPU {run.speed('cpu') / 1e6:6.2f}",
        f"load {run.load1:.1f}",
    ]
    if run.attach_s is not None:
        parts.append(f"attach {run.attach_s:.2f}s")
    if share is not None:
        parts.append(f"hot_a {100 * share:.1f}% of {run.split.a + run.split.b}")
    if run.bpf_ns is not None and run.split.total:
        parts.append(f"BPF {run.bpf_ns / run.split.total / 1000:.1f} us/sample")
    return ", ".join(parts)


@dataclass(frozen=True)
class Row:
    """One mode's figures over its repetitions."""

    mode: str
    speed: dict[str, float]  # by measure: the best run's iterations per second
    slowdown: dict[str, float]  # by measure: 1 - speed / alone's best (not for alone)
    split: Split  # pooled over the repetitions
    bpf_share: float | None  # median
    bpf_us_per_sample: tuple[float, float] | None  # best, median
    attach_s: tuple[float, float] | None  # best, median
    tool_cpu_pct: float | None  # median, % of one CPU over the workload's wall time


def best_or_none(values: list[float], pick: Callable[[list[float]], float]) -> float | None:
    return pick(values) if values else None


def best_and_median(values: list[float]) -> tuple[float, float] | None:
    return (min(values), median(values)) if values else None


def summarize(runs: list[Run]) -> list[Row]:
    alone = {m: max(r.speed(m) for r in runs if r.mode == ALONE) for m in MEASURES}
    rows = []
    for mode in dict.fromkeys(r.mode for r in runs):
        mine = [r for r in runs if r.mode == mode]
        speed = {m: max(r.speed(m) for r in mine) for m in MEASURES}
        sampled = [r for r in mine if r.bpf_ns is not None and r.split.total]
        attach = [r.attach_s for r in mine if r.attach_s is not None]
        cpu = [100 * r.tool_cpu_s / r.wall_s for r in mine if r.tool_cpu_s is not None]
        rows.append(
            Row(
                mode,
                speed,
                {m: 1 - speed[m] / alone[m] for m in MEASURES} if mode != ALONE else {},
                sum((r.split for r in mine), Split()),
                best_or_none([r.bpf_share for r in mine if r.bpf_share is not None], median),
                best_and_median([(r.bpf_ns or 0) / r.split.total / 1000 for r in sampled]),
                best_and_median(attach),
                best_or_none(cpu, median),
            )
        )
    return rows


def fmt(value: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "–" if value is None else f"{value * scale:{spec}}{unit}"


def pair(values: tuple[float, float] | None) -> str:
    return f"{values[0]:.2f} / {values[1]:.2f}" if values else "–"


def table(rows: list[Row], repeat: int) -> str:
    """Metrics down, modes across."""
    lines = [
        "| metric | " + " | ".join(r.mode for r in rows) + " |",
        "|---" * (len(rows) + 1) + "|",
    ]

    def line(metric: str, cells: list[str]) -> None:
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")

    for m, what in MEASURES.items():
        line(f"{what} (best of {repeat})", [f"{r.speed[m] / 1e6:.2f}" for r in rows])
        line("… slowdown", [fmt(r.slowdown.get(m), "+.1f", 100, " %") for r in rows])
    line(
        "BPF time / workload's wall time (median)",
        [fmt(r.bpf_share, ".2f", 100, " %") for r in rows],
    )
    line("BPF µs per workload sample (best / median)", [pair(r.bpf_us_per_sample) for r in rows])
    line(
        "hot_a share of hot_a+hot_b (truth 75 %)",
        [fmt(r.split.share, ".1f", 100, " %") for r in rows],
    )
    line(
        "samples with hot_a or hot_b / all",
        [f"{r.split.a + r.split.b} / {r.split.total}" if r.mode != ALONE else "–" for r in rows],
    )
    line(
        "attach s, start to ready line (best / median)",
        [pair(r.attach_s) for r in rows],
    )
    line("tool's CPU, % of one CPU (median)", [fmt(r.tool_cpu_pct, ".1f") for r in rows])
    return "\n".join(lines)


def goals(rows: list[Row]) -> list[str]:
    modes = {r.mode: r for r in rows}
    ours, spy = modes.get("bpfprof"), modes.get("py-spy")
    off = modes.get(f"bpfprof {NO_PYTHON_FLAG}")
    out = []
    if ours is not None:
        measured = ", ".join(
            f"{m} {100 * d:+.1f} % ({'met' if d <= 0.01 else 'missed'})"
            for m, d in ours.slowdown.items()
        )
        share = "" if ours.bpf_share is None else f"; BPF time {100 * ours.bpf_share:.2f} % of it"
        out.append(f"- bpfprof slows the workload by at most 1 %: {measured}{share}")
    if ours is not None and spy is not None:
        what = "- hot_a's share within 5 points of py-spy's"
        if ours.split.share is None or spy.split.share is None:
            out.append(f"{what}: missed, no hot_a/hot_b in bpfprof's samples")
        else:
            gap = 100 * (ours.split.share - spy.split.share)
            truth = 100 * (ours.split.share - TRUTH)
            verdict = "met" if abs(gap) <= 5 else "missed"
            out.append(f"{what}: {verdict}, {gap:+.1f} points ({truth:+.1f} from the truth)")
    if ours and off and ours.bpf_us_per_sample and off.bpf_us_per_sample:
        best, mid = (ours.bpf_us_per_sample[i] - off.bpf_us_per_sample[i] for i in (0, 1))
        out.append(
            f"- BPF time the Python walk adds per sample: {best:+.2f} µs by the best runs, "
            f"{mid:+.2f} µs by the medians"
        )
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py python", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="repetitions of each mode (default 5)")
    p.add_argument(
        "--rounds", type=int, default=1500, help="rounds of hot_a+hot_b (default 1500: ~5 s)"
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured first round")
    p.add_argument(
        "--no-nonblocking", action="store_true", help="leave out the py-spy --nonblocking row"
    )
    p.add_argument(
        "--tree",
        type=Path,
        help="run bpfprof from this source tree (e.g. a clean clone at a commit) "
        "instead of the venv's installed command",
    )
    p.add_argument("--json", type=Path, help="also write every run's figures here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Inherited as ignored from a background shell, SIGINT would be ignored
    # by the tools too and they would never stop (see bench/cpu.py).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.geteuid() != 0:
        print("bench: error: the benchmark loads BPF programs: run it as root", file=sys.stderr)
        return 1
    try:
        chosen, notes = tools(bpfprof_command(args.tree), not args.no_nonblocking)
        stats_fd = bpfstats.enable_run_time_stats()
        load_start = os.getloadavg()
        try:
            runs = run_all(args, chosen)
        finally:
            os.close(stats_fd)
        load_end = os.getloadavg()
    except (BenchError, bpfstats.StatsUnavailable, subprocess.CalledProcessError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    info = machine()
    info["commit"] = commit(args.tree or REPO)
    for name, exe in (("workload_python", PYTHON), ("py_spy", PYSPY)):
        if Path(exe).exists():
            done = subprocess.run([exe, "--version"], capture_output=True, text=True)
            info[name] = done.stdout.strip()
    rows = summarize(runs)
    loads = f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
    print(f"bpfprof {info['commit']}, {args.repeat} repetitions, {loads}")
    print(f"machine: {info}")
    print(table(rows, args.repeat))
    print("\n".join(goals(rows) + [f"- note: {n}" for n in notes]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": " ".join([".venv/bin/python", "bench/run.py", "python", *argv]),
            "machine": info,
            "loadavg": {"start": load_start, "end": load_end},
            "runs": [asdict(r) for r in runs],
            "notes": notes,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
