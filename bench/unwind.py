"""`bench/run.py unwind`: what unwinding from CFI costs, beside frame pointers.

Three measurements:

- BPF time per sample of the CPU program with the CFI walker and with
  frame pointers only (bpf_get_stackid), on programs built without frame
  pointers: a 7-frame chain, qsort through Debian's libc, and a recursion
  deeper than the 127-frame limit. The program runs held until its tables
  are loaded; run time comes from the kernel's BPF statistics.
- Time and Python memory to build the tables of libc and python3, cold
  (parsing the CFI) and from the on-disk cache.
- Kernel memory of the maps (the `memlock` the kernel charges for each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import bpfstats, procfs

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE.parent / "tests" / "programs"
DEFAULT_JSON = HERE / "results" / "unwind.json"
BINARIES = ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3")
WORKLOADS = ("chain", "qsort", "deep")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py unwind", description=__doc__.splitlines()[0])
    p.add_argument("-F", "--frequency", type=int, default=499, help="sampling rate (default 499)")
    p.add_argument("--seconds", type=float, default=3.0, help="per workload and mode (default 3)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    return p.parse_args(argv)


def build_program(tmp: Path) -> Path:
    """tests/programs/unwind.c without frame pointers (as the tests build it)."""
    main_o, fp_o, exe = tmp / "unwind.o", tmp / "unwind_fp.o", tmp / "unwind"
    cc = ["gcc", "-O2", "-c"]
    subprocess.run([*cc, "-fomit-frame-pointer", "-o", main_o, PROGRAMS / "unwind.c"], check=True)
    subprocess.run([*cc, "-o", fp_o, PROGRAMS / "unwind_fp.c"], check=True)
    subprocess.run(["gcc", "-o", exe, main_o, fp_o, "-lpthread"], check=True)
    return exe


def map_memory(program: Any) -> dict[str, int]:
    """memlock bytes of each of the program's maps, by name."""
    out = {}
    for name in program.tables:
        fd = program[name].map_fd
        with open(f"/proc/self/fdinfo/{fd}") as f:
            fields = procfs.parse_fdinfo(f.read())
        out[name.decode() if isinstance(name, bytes) else name] = int(fields.get("memlock", "0"))
    return out


def filtered_run_cost(args: argparse.Namespace, cache: Path) -> float:
    """ns per run of the program when the sample is not its target's: it
    targets a sleeping process, so every run returns at the filter."""
    from agent.config import SourceOptions
    from agent.sources.cpu import CpuSource

    sleeper = subprocess.Popen(["sleep", "60"])
    source = CpuSource(SourceOptions(frequency=args.frequency, filter_pids=True), cache_dir=cache)
    source.add_targets([sleeper.pid])
    source.start()
    try:
        before = procfs.snapshot(os.getpid()).perf_prog()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            source.poll(100, lambda _pid: None)
        after = procfs.snapshot(os.getpid()).perf_prog()
    finally:
        source.close()
        sleeper.kill()
        sleeper.wait()
    assert before is not None and after is not None
    return (after.run_time_ns - before.run_time_ns) / max(1, after.run_cnt - before.run_cnt)


def per_sample(
    exe: Path, workload: str, mode: str, args: argparse.Namespace, cache: Path, filtered_ns: float
) -> dict[str, Any]:
    """One workload under one mode. The program also runs (and returns at
    the pid filter) for every other task that is on a CPU at a tick, so the
    cost of a counted sample is the total less those runs at `filtered_ns`."""
    from agent.config import SourceOptions
    from agent.sources.cpu import CpuSource

    proc = subprocess.Popen(
        [str(exe), workload, str(args.seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    source = CpuSource(
        SourceOptions(frequency=args.frequency, filter_pids=True, unwind=mode), cache_dir=cache
    )
    source.add_targets([proc.pid])
    started = time.monotonic()
    source.start()
    load_s = time.monotonic() - started
    try:
        before = procfs.snapshot(os.getpid()).perf_prog()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while proc.poll() is None:
            source.poll(100, lambda _pid: None)
        after = procfs.snapshot(os.getpid()).perf_prog()
        samples = source.drain() + source.drain()
        counters = source.counters()
        memory = map_memory(source._bpf)  # the bench looks inside
    finally:
        source.close()
        proc.kill()
        proc.wait()
    assert before is not None and after is not None
    run_ns = after.run_time_ns - before.run_time_ns
    runs = after.run_cnt - before.run_cnt
    counted = counters["samples"]
    frames = sum(len(s.key.stack.user) * s.values[0] for s in samples)
    own_ns = run_ns - (runs - counted) * filtered_ns
    return {
        "workload": workload,
        "mode": mode,
        "samples": counted,
        "runs": runs,
        "ns_per_sample": own_ns / counted if counted else None,
        "ns_per_run": run_ns / runs if runs else None,
        "user_frames_per_sample": frames / counted if counted else None,
        "load_s": load_s,
        "map_memlock": memory,
    }


def table_build(path: str, cache_dir: Path) -> dict[str, Any]:
    from agent.unwind.table import TableCache, load_unwind_info
    from symbolizer.elf import read_build_id

    real = os.path.realpath(path)
    with open(real, "rb") as f:
        build_id = read_build_id(f)
    out: dict[str, Any] = {"binary": real, "size": os.path.getsize(real)}
    for phase, cache in (("cold", TableCache(None)), ("cached", TableCache(cache_dir))):
        if phase == "cached":
            with open(real, "rb") as f:
                load_unwind_info(f, build_id, cache)  # fills the cache
        t0 = time.perf_counter()
        with open(real, "rb") as f:
            info = load_unwind_info(f, build_id, cache)
        out[f"{phase}_s"] = time.perf_counter() - t0
        tracemalloc.start()  # a separate run: tracing slows allocation-heavy code 50x
        with open(real, "rb") as f:
            load_unwind_info(f, build_id, cache)
        out[f"{phase}_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    out["rows"] = info.table.count
    out["row_bytes"] = len(info.table.data)
    return out


def report(results: dict[str, Any]) -> str:
    lines = [
        "BPF time per sample (frame-pointer-less programs; runs for other tasks, "
        f"{results['filtered_run_ns']:.0f} ns each at the pid filter, taken out):"
    ]
    lines.append(
        f"  {'workload':8} {'mode':6} {'samples':>8} {'frames':>7} {'ns/sample':>10} {'ns/run':>8}"
    )
    for r in results["per_sample"]:
        lines.append(
            f"  {r['workload']:8} {r['mode']:6} {r['samples']:8d} "
            f"{r['user_frames_per_sample'] or 0:7.1f} {r['ns_per_sample'] or 0:10.0f} "
            f"{r['ns_per_run'] or 0:8.0f}"
        )
    lines.append("Tables:")
    for t in results["tables"]:
        lines.append(
            f"  {t['binary']}: {t['rows']} rows ({t['row_bytes'] / 2**20:.2f} MiB), "
            f"cold {t['cold_s']:.3f} s (peak {t['cold_peak_mib']:.1f} MiB), "
            f"cached {t['cached_s'] * 1000:.1f} ms (peak {t['cached_peak_mib']:.1f} MiB)"
        )
    lines.append("Map memory (memlock, KiB):")
    for mode, memory in results["map_memlock"].items():
        total = sum(memory.values())
        parts = ", ".join(f"{k} {v // 1024}" for k, v in sorted(memory.items()) if v >= 64 * 1024)
        lines.append(f"  {mode}: total {total // 1024} ({parts})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: error: the benchmark loads BPF programs: run it as root", file=sys.stderr)
        return 1
    try:
        stats_fd = bpfstats.enable_run_time_stats()
    except bpfstats.StatsUnavailable as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bpfprof-unwind-") as tmp:
        exe = build_program(Path(tmp))
        cache = Path(tmp) / "cache"
        filtered_ns = filtered_run_cost(args, cache)
        rows = []
        for workload in WORKLOADS:
            for mode in ("fp", "dwarf"):
                rows.append(per_sample(exe, workload, mode, args, cache, filtered_ns))
        tables = [table_build(path, Path(tmp) / "tables") for path in BINARIES]
    os.close(stats_fd)
    memory = {
        mode: next(r["map_memlock"] for r in rows if r["mode"] == mode) for mode in ("fp", "dwarf")
    }
    for r in rows:
        del r["map_memlock"]
    results = {
        "command": " ".join([".venv/bin/python", "bench/run.py", "unwind", *argv]),
        "loadavg": os.getloadavg(),
        "filtered_run_ns": filtered_ns,
        "per_sample": rows,
        "tables": tables,
        "map_memlock": memory,
    }
    print(report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}", file=sys.stderr)
    return 0
