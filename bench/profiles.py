"""Benchmarks of the allocation, lock and off-CPU profilers (make bench).

Each workload (bench/profiles_workload.c) measures its own time per
operation around its loop; it is run alone and under each tool attached to
its pid, and the best of a few runs is kept (the host is shared, so noise
only ever adds time). Compared with the tools the issue names:
memleak-bpfcc for allocations, a plain futex tracer for locks.

  malloc   ns per malloc+free pair: alone, bpfprof alloc (uprobe sessions
           where the kernel has them), the same with uretprobes
           (BPFPROF_UPROBE_SESSIONS=0), bpfprof alloc --no-inuse,
           memleak-bpfcc; goal: bpfprof's slowdown at most a tenth of
           memleak's
  lock     ns per lock/unlock, 1 thread (never contended) and 2 threads
           (contended): alone, bpfprof lock (user stacks walked with CFI,
           with --unwind fp, and with every wait taking stacks), futex
           tracer; and ns per getppid(), which the raw syscall tracepoints
           see too; goals: nothing added uncontended, at most 1 us per
           contended wait
  offcpu   ns per hand-over of a token between two threads pinned to one
           CPU (one context switch each): alone, bpfprof offcpu (CFI walk,
           --unwind fp, and every block taking stacks); goal: at most 1 us
           per switch
  follow   ms from a fork to the child's allocation probes under `bpfprof
           record -t alloc -- COMMAND`: the child allocates from its first
           instruction and counts its calls per ms; the profile's unbiased
           count says from which ms on they were seen

Beside the workload's own time, the BPF run time of bpfprof's programs per
operation is read from the kernel's statistics (BPF_ENABLE_STATS): the
programs' own cost, without the noise of a shared host's scheduling (it
includes their runs for other processes' events, which return at the pid
filter).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import bpfstats, procfs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BPFPROF = str(REPO / ".venv" / "bin" / "bpfprof")
PYTHON = str(REPO / ".venv" / "bin" / "python")


@dataclass(frozen=True)
class Tool:
    name: str
    argv: Callable[[int, Path], list[str]]
    ready: str  # a line the tool prints once it is attached
    stream: str = "stderr"


def bpfprof(kind: str, *extra: str, env: str = "") -> Tool:
    """`bpfprof record` of the workload; `env` (NAME=VALUE) set for it."""
    prefix = ["env", env] if env else []
    return Tool(
        f"bpfprof {kind}{' ' + ' '.join(extra) if extra else ''}{f' ({env})' if env else ''}",
        lambda pid, out: [
            *prefix,
            *[BPFPROF, "record", "-t", kind, "-p", str(pid), "-o", str(out), *extra],
        ],
        "recording",
    )


MEMLEAK = Tool(
    "memleak-bpfcc", lambda pid, _: ["memleak-bpfcc", "-p", str(pid)], "Attaching", "stdout"
)
FUTEX = Tool(
    "futex tracer",
    lambda pid, _: [PYTHON, str(HERE / "futex_tracer.py"), str(pid)],
    "attached",
    "stdout",
)


def build(workdir: Path) -> Path:
    exe = workdir / "profiles_workload"
    src = HERE / "profiles_workload.c"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    return exe


@dataclass(frozen=True)
class Result:
    ns_per_op: float  # the workload's own figure
    bpf_ns_per_op: float | None  # the tool's BPF run time per op (bpfprof only)


def run_once(argv: list[str], tool: Tool | None, workdir: Path) -> Result:
    """ns per op of one run, with `tool` attached to the workload first."""
    prog = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert prog.stdin is not None and prog.stdout is not None
    pid = int(prog.stdout.readline().split()[1])
    attached = None
    try:
        if tool is not None:
            attached = subprocess.Popen(
                tool.argv(pid, workdir / "out.pb.gz"),
                stdout=subprocess.PIPE if tool.stream == "stdout" else subprocess.DEVNULL,
                stderr=subprocess.PIPE if tool.stream == "stderr" else subprocess.DEVNULL,
                text=True,
            )
            stream = attached.stdout if tool.stream == "stdout" else attached.stderr
            assert stream is not None
            for line in stream:
                if tool.ready in line:
                    break
            else:
                raise RuntimeError(f"{tool.name} exited before attaching")
            settle(attached.pid)
        before = bpf_run_time(tool, attached)
        prog.stdin.write("go\n")
        prog.stdin.flush()
        result = prog.stdout.readline().split()
        after = bpf_run_time(tool, attached)
        bpf = (after - before) / int(result[3]) if before is not None and after else None
        return Result(float(result[1]), bpf)
    finally:
        prog.wait()
        if attached is not None:
            attached.send_signal(signal.SIGINT)
            try:
                attached.wait(timeout=60)
            except subprocess.TimeoutExpired:
                attached.kill()


def bpf_run_time(tool: Tool | None, process: subprocess.Popen[str] | None) -> int | None:
    """Total BPF run time (ns) of the programs a bpfprof process holds."""
    if tool is None or process is None or not tool.name.startswith("bpfprof"):
        return None
    return procfs.snapshot(process.pid).total_run_time_ns()


def perf_events(pid: int) -> int:
    """How many perf events and BPF links (each attached probe is one) a
    process holds."""
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd) in ("anon_inode:[perf_event]", "anon_inode:bpf_link")
        except OSError:
            continue
    return n


def settle(pid: int, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Wait until the tool's probes stop appearing: memleak says it is
    attaching before it attaches, one probe at a time."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = perf_events(pid)
        if n != last:
            last, since = n, time.monotonic()
        elif n > 0 and time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise RuntimeError(f"pid {pid} never finished attaching")


def best(argv: list[str], tool: Tool | None, workdir: Path, repeat: int) -> float:
    """The best of `repeat` runs (noise only adds time); the BPF time per
    op of the runs is kept in BPF_NS, by tool name, its best too."""
    runs = [run_once(argv, tool, workdir) for _ in range(repeat)]
    bpf = [r.bpf_ns_per_op for r in runs if r.bpf_ns_per_op is not None]
    if tool is not None and bpf:
        BPF_NS[tool.name] = min(bpf)
    return min(r.ns_per_op for r in runs)


BPF_NS: dict[str, float] = {}


def bpf_note(tool: Tool) -> str:
    ns = BPF_NS.pop(tool.name, None)
    return f" (BPF {ns / 1000:.2f} us per op)" if ns is not None else ""


def bench_malloc(exe: Path, workdir: Path, repeat: int, n: int) -> list[str]:
    argv = [str(exe), "malloc", str(n)]
    alone = best(argv, None, workdir, repeat)
    rows = [f"| malloc+free pair, alone | {alone:.0f} ns | 1.0x |"]
    slow: dict[str, float] = {}
    uretprobes = bpfprof("alloc", env="BPFPROF_UPROBE_SESSIONS=0")
    tools = [bpfprof("alloc"), uretprobes, bpfprof("alloc", "--no-inuse")]
    if shutil.which("memleak-bpfcc"):
        tools.append(MEMLEAK)
    for tool in tools:
        t = best(argv, tool, workdir, repeat if tool is not MEMLEAK else 1)
        slow[tool.name] = t / alone
        rows.append(f"| malloc+free pair, {tool.name} | {t:.0f} ns | {t / alone:.1f}x |")
    if "memleak-bpfcc" in slow:
        for name in ("bpfprof alloc", uretprobes.name, "bpfprof alloc --no-inuse"):
            rows.append(
                f"| slowdown of {name} / memleak's | | {slow[name] / slow['memleak-bpfcc']:.3f} |"
            )
    return rows


def bench_lock(exe: Path, workdir: Path, repeat: int, n: int) -> list[str]:
    """Uncontended: one thread locking and unlocking (never enters the
    kernel). Contended: the hand-over workload, where every hand-over is one
    futex wait (and one wake), so the time added per hand-over is the cost of
    a traced contended wait."""
    rows = []
    argv = [str(exe), "lock", str(n), "1"]
    alone = best(argv, None, workdir, repeat)
    rows.append(f"| lock/unlock, uncontended, alone | {alone:.1f} ns | |")
    for tool in (bpfprof("lock"), FUTEX):
        t = best(argv, tool, workdir, repeat)
        rows.append(f"| lock/unlock, uncontended, {tool.name} | {t:.1f} ns | {t - alone:+.1f} ns |")
    cpu = str((os.cpu_count() or 1) - 1)
    argv = ["taskset", "-c", cpu, str(exe), "pingpong", str(n // 10)]
    alone = best(argv, None, workdir, repeat)
    rows.append(f"| futex wait + wake (hand-over), alone | {alone:.0f} ns | |")
    tools = (bpfprof("lock"), bpfprof("lock", "--unwind", "fp"))
    for tool in (*tools, bpfprof("lock", "--wait-sampling", "1"), FUTEX):
        t = best(argv, tool, workdir, repeat)
        rows.append(
            f"| futex wait + wake (hand-over), {tool.name} | {t:.0f} ns | "
            f"{(t - alone) / 1000:+.2f} us per wait{bpf_note(tool)} |"
        )
    # the raw sys_enter/sys_exit programs run for every syscall of every
    # process, and return at once for those that are not futex calls
    argv = [str(exe), "syscall", str(n)]
    alone = best(argv, None, workdir, repeat)
    rows.append(f"| another syscall (getppid), alone | {alone:.1f} ns | |")
    for tool in (bpfprof("lock"), FUTEX):
        t = best(argv, tool, workdir, repeat)
        rows.append(f"| another syscall, {tool.name} | {t:.1f} ns | {t - alone:+.1f} ns |")
    return rows


def bench_offcpu(exe: Path, workdir: Path, repeat: int, n: int) -> list[str]:
    cpu = str((os.cpu_count() or 1) - 1)
    argv = ["taskset", "-c", cpu, str(exe), "pingpong", str(n)]
    alone = best(argv, None, workdir, repeat)
    rows = [f"| context switch (hand-over on one CPU), alone | {alone:.0f} ns | |"]
    every = bpfprof("offcpu", "--wait-sampling", "1")
    for tool in (bpfprof("offcpu"), bpfprof("offcpu", "--unwind", "fp"), every):
        t = best(argv, tool, workdir, repeat)
        rows.append(
            f"| context switch, {tool.name} | {t:.0f} ns | "
            f"{(t - alone) / 1000:.2f} us added{bpf_note(tool)} |"
        )
    return rows


def unseen_ms(counts: list[int], seen: float) -> int:
    """The first ms from which the calls made add up to no more than `seen`:
    the ms before it went unseen."""
    suffix = sum(counts)
    for ms, n in enumerate(counts):
        if suffix <= seen:
            return ms
        suffix -= n
    return len(counts)


def bench_follow(exe: Path, workdir: Path, repeat: int, ms: int) -> list[str]:
    out = workdir / "follow.folded"
    # a 16 MiB mean rate samples ~6 % of the 1 MiB calls: no ring-buffer loss
    record = [BPFPROF, "record", "-t", "alloc", "--alloc-rate", str(16 << 20), "-o", str(out)]
    windows = []
    for _ in range(repeat):
        done = subprocess.run(
            [*record, "--", str(exe), "fork", str(ms)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("counts"))
        counts = [int(c) for c in line.split()[1:]]
        seen = sum(int(ln.rsplit(" ", 1)[1]) for ln in out.read_text().splitlines())
        windows.append(unseen_ms(counts, seen))
    runs = ", ".join(map(str, windows))
    what = "fork to the child's allocation probes (`record -t alloc -- COMMAND`)"
    return [f"| {what} | {min(windows)}–{max(windows)} ms | runs: {runs} ms |"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/profiles.py")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["malloc", "lock", "offcpu", "follow"])
    args, _ = parser.parse_known_args(argv)
    try:
        stats_fd: int | None = bpfstats.enable_run_time_stats()
    except bpfstats.StatsUnavailable as e:
        print(f"no BPF run-time statistics: {e}", file=sys.stderr)
        stats_fd = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        exe = build(workdir)
        rows = ["| what | time per op | vs alone |", "|---|---|---|"]
        if args.only in (None, "malloc"):
            rows += bench_malloc(exe, workdir, args.repeat, 300_000)
        if args.only in (None, "lock"):
            rows += bench_lock(exe, workdir, args.repeat, 2_000_000)
        if args.only in (None, "offcpu"):
            rows += bench_offcpu(exe, workdir, args.repeat, 200_000)
        if args.only in (None, "follow"):
            rows += bench_follow(exe, workdir, args.repeat, 300)
    if stats_fd is not None:
        os.close(stats_fd)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
