"""The benchmark's readable table and its JSON records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from bench import summary
from bench.summary import ALONE, BCC, BPFPROF, Goal, Spread
from bench.trial import Trial

MODES = (ALONE, BPFPROF, BCC)


def progress(t: Trial) -> str:
    line = f"  rep {t.rep} {t.mode:<14} cpu {t.workload_cpu_s:6.3f}s wall {t.workload_wall_s:6.3f}s"
    if t.attach_s is not None:
        line += f"  attach {t.attach_s:.2f}s (cpu {t.attach_cpu_s:.2f}s)"
        line += f" rss {t.rss_mib:.0f}MiB samples {t.samples}"
    return line + f"  load {t.load1:.2f}"


def trial_dict(t: Trial) -> dict[str, object]:
    d = asdict(t)
    d["tool_cpu_percent"] = t.tool_cpu_percent
    d["bpf_ns_per_run"] = t.bpf_ns_per_run
    d["bpf_ns_per_sample"] = t.bpf_ns_per_sample
    d["bpf_other_ns"] = t.bpf_other_ns
    return d


Row = tuple[str, Callable[[str], Spread | None], float, int]


def rows(trials: list[Trial]) -> list[Row]:
    def m(get: Callable[[Trial], float | None]) -> Callable[[str], Spread | None]:
        return lambda mode: summary.metric(trials, mode, get)

    def ratio(get: Callable[[Trial], float]) -> Callable[[str], Spread | None]:
        return lambda mode: summary.slowdown(trials, mode, get)

    return [
        ("workload CPU time (s)", m(lambda t: t.workload_cpu_s), 1, 3),
        ("workload wall time (s)", m(lambda t: t.workload_wall_s), 1, 3),
        ("slowdown by CPU time (x alone)", ratio(lambda t: t.workload_cpu_s), 1, 3),
        ("slowdown by wall time (x alone)", ratio(lambda t: t.workload_wall_s), 1, 3),
        ("time to attach (s)", m(lambda t: t.attach_s), 1, 2),
        ("profiler CPU until attached (s)", m(lambda t: t.attach_cpu_s), 1, 2),
        ("peak RSS (MiB)", m(lambda t: t.rss_mib), 1, 0),
        ("profiler CPU while recording (% of 1 CPU)", m(lambda t: t.tool_cpu_percent), 1, 2),
        ("profiler CPU, start to exit (s)", m(lambda t: t.tool_cpu_total_s), 1, 2),
        ("samples of the workload", m(lambda t: t.samples), 1, 0),
        ("BPF time per perf-event run (µs)", m(lambda t: t.bpf_ns_per_run), 1e-3, 2),
        ("BPF time per workload sample (µs)", m(lambda t: t.bpf_ns_per_sample), 1e-3, 2),
        ("BPF time of other programs (ms)", m(lambda t: t.bpf_other_ns), 1e-6, 2),
    ]


def table(
    trials: list[Trial],
    goals: list[Goal],
    machine: dict[str, object],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    command: str,
) -> str:
    reps = len(summary.by_mode(trials, ALONE))
    head = ["metric: median [min–max]", *MODES]
    body = []
    for name, get, scale, digits in rows(trials):
        cells = [(s.fmt(scale, digits) if (s := get(mode)) else "–") for mode in MODES]
        body.append([name, *cells])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [
        f"bpfprof CPU benchmark: {command}",
        f"host: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['mem_gib']} GiB, "
        f"kernel {machine['kernel']}, Debian {machine['debian']}; bpfprof {machine['commit']}",
        f"load average (1/5/15 min) at start {_load(load[0])}, at end {_load(load[1])}; "
        f"{reps} interleaved repetitions",
        "",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    lines += ["", "goals for bpfprof record -t cpu:"]
    for g in goals:
        verdict = "PASS" if g.passed else "FAIL"
        lines.append(f"  {verdict}  {g.name}: {g.measured}; goal {g.target}")
    return "\n".join(lines)


def _load(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.2f}" for v in values)
