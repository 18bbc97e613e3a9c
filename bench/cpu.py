"""`make bench`: the CPU profiler's cost, beside BCC's profile-bpfcc.

A fixed-work program runs alone, under `bpfprof record -F 99 --pid`, and
under `profile-bpfcc -F 99 -p`, interleaved in one run (the order rotates
each repetition, so the host's drift and any position effect hit every mode
alike). One unmeasured warm-up round first fills the page cache with BCC's
LLVM for both tools.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import bpfstats, procfs, report, summary
from bench.trial import BenchError, Profiler, Trial, run_alone, run_profiled

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.c"
DEFAULT_JSON = HERE / "results" / "cpu.json"
BCC_PROFILE = "profile-bpfcc"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="measured repetitions (default 5)")
    p.add_argument(
        "--iterations",
        type=int,
        default=4_000_000_000,
        help="work of the program (default 4e9: about 7 s of CPU here, over one 5 s window)",
    )
    p.add_argument("-F", "--frequency", type=int, default=99, help="sampling rate (default 99)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--no-warmup", action="store_true", help="skip the unmeasured first round")
    p.add_argument(
        "--tree",
        type=Path,
        help="run bpfprof from this source tree (e.g. a clean clone at a commit) "
        "instead of the venv's installed command",
    )
    p.add_argument(
        "--bpfprof-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `bpfprof record` (repeatable, e.g. --bpfprof-arg=--unwind=fp)",
    )
    return p.parse_args(argv)


def find_tools(tree: Path | None) -> tuple[list[str], str]:
    """How to run bpfprof (the venv's command, or `tree`'s code under the
    venv's interpreter) and where BCC's profile tool is."""
    if os.geteuid() != 0:
        raise BenchError("the benchmark loads BPF programs: run it as root")
    if tree is not None:
        if not (tree / "agent" / "cli.py").is_file():
            raise BenchError(f"{tree} is not a bpfprof source tree (no agent/cli.py)")
        os.environ["PYTHONPATH"] = str(tree.resolve())
        # -P: no current directory first on the path, so PYTHONPATH's tree
        # wins over the checkout we may be running in.
        code = "import sys; from agent.cli import main; sys.exit(main())"
        bpfprof = [sys.executable, "-P", "-c", code]
    else:
        exe = Path(sys.executable).parent / "bpfprof"
        if not exe.exists():
            raise BenchError(f"{exe} not found: run `make setup`")
        bpfprof = [str(exe)]
    bcc = shutil.which(BCC_PROFILE) or shutil.which(BCC_PROFILE, path="/usr/sbin")
    if bcc is None:
        raise BenchError(f"{BCC_PROFILE} not found (Debian bpfcc-tools): run `make setup-test`")
    if shutil.which("gcc") is None:
        raise BenchError("gcc not found: run `make setup`")
    return bpfprof, bcc


def profilers(bpfprof: list[str], extra: list[str], bcc: str, frequency: int) -> list[Profiler]:
    """bpfprof and profile-bpfcc, each on one pid at the same frequency."""
    freq = str(frequency)
    return [
        Profiler(
            summary.BPFPROF,
            lambda pid, tmp: [
                *bpfprof,
                "record",
                "-F",
                freq,
                "--pid",
                str(pid),
                "-o",
                str(tmp / "profile.pb.gz"),
                *extra,
            ],
            lambda tmp: pprof_samples(tmp / "profile.pb.gz"),
        ),
        Profiler(
            summary.BCC,
            lambda pid, tmp: [bcc, "-F", freq, "-f", "-p", str(pid)],
            lambda tmp: procfs.sum_folded((tmp / "stdout").read_text(errors="replace")),
        ),
    ]


def pprof_samples(path: Path) -> int:
    from agent.exporters.pprof import decode

    profile = decode(path.read_bytes())
    idx = profile.sample_index("samples")
    return sum(s.values[idx] for s in profile.samples)


def compile_workload(tmp: Path) -> Path:
    out = tmp / "workload"
    cmd = ["gcc", "-O2", "-g", "-fno-omit-frame-pointer", str(WORKLOAD), "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def run_all(args: argparse.Namespace, tools: list[Profiler], program: Path) -> list[Trial]:
    modes = [summary.ALONE, *(t.name for t in tools)]
    by_name = {t.name: t for t in tools}

    def one(mode: str, rep: int) -> Trial:
        if mode == summary.ALONE:
            return run_alone(program, args.iterations, rep)
        return run_profiled(by_name[mode], program, args.iterations, rep)

    if not args.no_warmup:
        print("warm-up round (not measured) ...", file=sys.stderr)
        for mode in modes:
            one(mode, -1)
    trials = []
    for rep in range(args.reps):
        order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
        for mode in order:
            trial = one(mode, rep)
            print(report.progress(trial), file=sys.stderr)
            trials.append(trial)
    return trials


def machine() -> dict[str, object]:
    model = ""
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    try:
        debian = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian = ""
    return {
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 2**20, 1),
        "debian": debian,
        "python": platform.python_version(),
    }


def commit(tree: Path) -> str:
    """The commit measured, with `+dirty` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(tree),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "agent",
                "symbolizer",
                "bpf",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Started in the background by a non-interactive shell, we inherit SIGINT
    # ignored, and so would the profilers (an ignored signal survives exec):
    # profile-bpfcc would never stop. A handler is reset to default by exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        bpfprof, bcc = find_tools(args.tree)
        stats_fd = bpfstats.enable_run_time_stats()
        with tempfile.TemporaryDirectory(prefix="bpfprof-bench-") as tmp:
            program = compile_workload(Path(tmp))
            load_start = os.getloadavg()
            trials = run_all(
                args, profilers(bpfprof, args.bpfprof_arg, bcc, args.frequency), program
            )
            load_end = os.getloadavg()
        os.close(stats_fd)
    except (BenchError, bpfstats.StatsUnavailable, subprocess.CalledProcessError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    info = machine()
    goals = summary.goals(trials)
    command = " ".join([".venv/bin/python", "bench/run.py", "cpu", *argv])
    info["commit"] = commit(args.tree or HERE.parent)
    print(report.table(trials, goals, info, (load_start, load_end), command))
    result = {
        "command": command,
        "machine": info,
        "config": {
            "reps": args.reps,
            "iterations": args.iterations,
            "frequency": args.frequency,
            "bpfprof": [*bpfprof, "record", *args.bpfprof_arg],
            "tree": str(args.tree) if args.tree else None,
            "commit": commit(args.tree or HERE.parent),
        },
        "loadavg": {"start": load_start, "end": load_end},
        "trials": [report.trial_dict(t) for t in trials],
        "goals": [asdict(g) for g in goals],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.json}", file=sys.stderr)
    return 0
