"""`make bench`: the continuous agent's own cost at steady state.

`bpfprof run` is started with its default settings (CPU at 19 Hz, 10 s
intervals, pprof files to a temporary directory), and again with every
profile type enabled. Start-up is not steady state: compiling the BPF
programs, reading every process's symbols once (the first interval), and the
first sight of the fixed-work program (its symbols, the first resolution of
its and libc's addresses, DWARF units decoded on first use), which lands in
the next intervals. So the program first runs back to back for a warm-up
(`--warmup`, two intervals by default), and only then are the agent's CPU
time and RSS read from /proc, as deltas over the measured window, while the
program keeps running back to back so the host is busy. The agent's own
per-interval figure (its status file's `cpu_percent`) is kept too: its
median is what one spike (another user's new binaries on a shared host)
does not move. The same program also runs with no agent, before and after,
for the slowdown: its own CPU time (what the perf-event handler steals runs
in its context, and CPU time does not count the waits other load on a
shared host causes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.c"
DEFAULT_JSON = HERE / "results" / "agent.json"
ALL_TYPES = (
    "[profiles.offcpu]\nenabled = true\n[profiles.lock]\nenabled = true\n"
    "[profiles.alloc]\nenabled = true\n"
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py agent", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=120, help="measured seconds per setting")
    p.add_argument("--warmup", type=float, default=20, help="seconds of workload before measuring")
    p.add_argument("--iterations", type=int, default=1_000_000_000, help="work per program run")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--default-only", action="store_true", help="skip the all-types setting")
    return p.parse_args(argv)


def workload(binary: Path, iterations: int) -> tuple[float, float]:
    """One fixed-work run: (wall s, cpu s) as the program measured them."""
    out = subprocess.run([str(binary), str(iterations)], capture_output=True, text=True, check=True)
    wall_ns, cpu_ns = out.stdout.split()[:2]
    return int(wall_ns) / 1e9, int(cpu_ns) / 1e9


def alone(binary: Path, iterations: int, seconds: float) -> list[float]:
    cpus = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(cpus) < 3:
        cpus.append(workload(binary, iterations)[1])
    return cpus


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def interval_cpu(statuses: Iterable[dict[str, Any]]) -> list[float]:
    """The agent's CPU (% of one core) of each interval its status files
    reported, once per interval however often a file was read."""
    seen: dict[int, float] = {}
    for status in statuses:
        last = status.get("last_interval") or {}
        if status.get("state") == "running" and "cpu_percent" in last:
            seen.setdefault(int(status.get("intervals", 0)), float(last["cpu_percent"]))
    return [seen[k] for k in sorted(seen)]


def read_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # being replaced right now: the next read has it
        return {}
    return data if isinstance(data, dict) else {}


def measure_agent(
    binary: Path, iterations: int, seconds: float, warmup: float, config_text: str, work: Path
) -> dict[str, Any]:
    config = work / "config.toml"
    config.write_text(f'[output]\ndir = "{work / "profiles"}"\n' + config_text)
    status = work / "status.json"
    cmd = [str(Path(sys.executable).parent / "bpfprof"), "run", "-c", str(config)]
    cmd += ["--status-file", str(status)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with open(work / "agent.log", "w") as log:
        agent = subprocess.Popen(cmd, stderr=log, env=env)
    try:
        proc = psutil.Process(agent.pid)
        deadline = time.monotonic() + 180
        while not status.exists():  # the first interval is start-up, not steady state
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start: {(work / 'agent.log').read_text()}")
            time.sleep(0.5)
        warm_until = time.monotonic() + warmup
        while time.monotonic() < warm_until:  # the program's first sight is start-up too
            workload(binary, iterations)
        first = read_status(status).get("intervals", 0)
        cpu0, t0 = cpu_seconds(proc), time.monotonic()
        rss: list[float] = []
        cpus = []
        statuses = []
        while time.monotonic() - t0 < seconds:
            cpus.append(workload(binary, iterations)[1])
            rss.append(proc.memory_info().rss / (1 << 20))
            statuses.append(read_status(status))
        cpu1, t1 = cpu_seconds(proc), time.monotonic()
        uss = proc.memory_full_info().uss / (1 << 20)
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    per_interval = interval_cpu(s for s in statuses if s.get("intervals", 0) > first)
    return {
        "agent_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "agent_cpu_percent_per_interval": per_interval,
        "agent_cpu_percent_interval_median": (
            round(statistics.median(per_interval), 3) if per_interval else None
        ),
        "agent_rss_mib_median": round(statistics.median(rss), 1),
        "agent_rss_mib_peak": round(max(rss), 1),
        "agent_uss_mib_end": round(uss, 1),
        "workload_runs": len(cpus),
        "workload_cpu_median_s": round(statistics.median(cpus), 4),
        "exit_status": agent.returncode,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: error: the agent loads BPF programs: run as root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bpfprof-bench-agent-") as tmp:
        work = Path(tmp)
        binary = work / "workload"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(WORKLOAD)], check=True)
        base = alone(binary, args.iterations, min(args.duration / 4, 30))
        settings = {"default": ""}
        if not args.default_only:
            settings["all types"] = ALL_TYPES
        results: dict[str, Any] = {}
        for name, text in settings.items():
            d = work / name.replace(" ", "-")
            d.mkdir()
            results[name] = measure_agent(
                binary, args.iterations, args.duration, args.warmup, text, d
            )
        base += alone(binary, args.iterations, min(args.duration / 4, 30))
    base_cpu = statistics.median(base)
    for r in results.values():
        r["workload_slowdown_percent"] = round(100 * (r["workload_cpu_median_s"] / base_cpu - 1), 2)
    report = {
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workload_alone_cpu_median_s": round(base_cpu, 4),
        "settings": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"agent at steady state ({args.duration:g} s each after {args.warmup:g} s of warm-up;"
        f" workload alone: {base_cpu:.3f} s CPU):"
    )
    print(
        f"{'setting':<12}{'CPU % core':>11}{'median/int':>11}{'RSS MiB':>9}{'peak':>7}"
        f"{'USS':>7}{'slowdown':>10}"
    )
    for name, r in results.items():
        median = r["agent_cpu_percent_interval_median"]
        print(
            f"{name:<12}{r['agent_cpu_percent_of_one_core']:>11.2f}"
            f"{median if median is not None else float('nan'):>11.2f}"
            f"{r['agent_rss_mib_median']:>9.1f}{r['agent_rss_mib_peak']:>7.1f}"
            f"{r['agent_uss_mib_end']:>7.1f}{r['workload_slowdown_percent']:>9.2f}%"
        )
    print(f"(written to {args.json})")
    return 0
