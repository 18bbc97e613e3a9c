"""The agent's own health: counters, one log line per interval, a status file.

Counters (FIELDS less GAUGES) are counts of one interval in the log line and
in the status file's `last_interval`, summed in `totals`; gauges (GAUGES) are
what was read at the interval's end, in `last_interval` and in `now`.

`bpfprof status` reads the status file (JSON, replaced atomically every
interval) rather than talking to the agent, so it works with no socket, no
privileges beyond reading the file, and while the agent is busy. The file
names the host's processes' counts and the exporting endpoint, so it is
0600 in a 0700 directory of the agent's own: `bpfprof status` is for root.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from agent.errors import InputError
from agent.safewrite import agent_dir, private_dir, write_atomic

# The order of the per-interval log line and of `bpfprof status`.
FIELDS = (
    "samples",
    "lost_samples",
    "lost_stacks",
    "lost_events",
    "map_full",
    "symbolization_misses",
    "python_code_misses",
    "processes",
    "export_ok",
    "export_failed",
    "export_retries",
    "queue",
    "spool",
    "spool_dropped",
    "spool_corrupt",
    "elf_budget_exceeded",
    "unwind_budget_exceeded",
    "cpu_percent",
    "rss_mib",
)
# Values read now, not counts: not summed, shown apart.
GAUGES = ("processes", "queue", "spool", "cpu_percent", "rss_mib")


class SelfUsage:
    """The agent's CPU (percent of one core since the last call) and RSS."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._last_cpu = self._cpu_seconds()
        self._last_time = time.monotonic()
        self.total_cpu_seconds = 0.0

    def _cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def sample(self) -> tuple[float, float]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        elapsed = max(now - self._last_time, 1e-9)
        percent = 100.0 * (cpu - self._last_cpu) / elapsed
        self.total_cpu_seconds = cpu
        self._last_cpu, self._last_time = cpu, now
        rss = self._proc.memory_info().rss / (1 << 20)
        return round(percent, 2), round(rss, 1)


def log_line(counters: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={counters[k]}" for k in FIELDS if k in counters)


def check_status_dir(path: Path) -> None:
    """At start: the status file's directory is (made) the agent's own, or a
    ConfigError. A shared one such as /tmp is refused, not just written
    into safely: its other names are not ours to tighten or replace."""
    agent_dir(path.parent, "status_file's directory")


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Replace the status file atomically (a fresh O_EXCL|O_NOFOLLOW
    temporary renamed over it, so a planted name is replaced, never written
    through); a failure only costs the file. The directory is checked again
    each time: /run may have been cleaned under a long-lived agent."""
    try:
        private_dir(path.parent)
        write_atomic(path, (json.dumps(status, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass


def read_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: no status file (is `bpfprof run` running? see systemctl status bpfprof)"
        ) from None
    except PermissionError:
        raise InputError(
            f"{path}: permission denied: the status is private to root (run: sudo bpfprof status)"
        ) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the status: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a bpfprof status file")
    return data


def format_status(status: Mapping[str, Any], now: float | None = None) -> str:
    """Human-readable status; says when the agent looks stale or stopped."""
    now = time.time() if now is None else now
    lines = []
    updated = float(status.get("updated", 0))
    age = now - updated
    state = status.get("state", "?")
    interval = float(status.get("interval", 10))
    if state == "running" and age > 3 * interval + 5:
        state = f"stale (no update for {duration(age)}: is the agent still running?)"
    lines.append(f"state:      {state}")
    if "started" in status:
        started = float(status["started"])
        lines.append(f"started:    {local_time(started)} (up {duration(now - started)})")
    if "updated" in status:
        lines.append(f"updated:    {local_time(updated)} ({duration(age)} ago)")
    for key in ("pid", "config", "exporting_to", "profiles", "intervals"):
        if key in status:
            lines.append(f"{key + ':':<11} {status[key]}")
    totals = status.get("totals", {})
    last = status.get("last_interval", {})
    gauges = status.get("now") or {k: v for k, v in last.items() if k in GAUGES}
    lines.append(f"{'counter':<22}{'last interval':>15}{'since start':>15}")
    for k in FIELDS:
        if k not in GAUGES and (k in last or k in totals):
            lines.append(f"{k:<22}{last.get(k, ''):>15}{totals.get(k, ''):>15}")
    if gauges:
        lines.append(f"{'gauge':<22}{'now':>15}")
        lines.extend(f"{k:<22}{gauges[k]:>15}" for k in GAUGES if k in gauges)
    return "\n".join(lines) + "\n"


def local_time(epoch: float) -> str:
    """`2023-11-14 22:13:20 CET`: the host's local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def duration(seconds: float) -> str:
    """`4s`, `12m 05s`, `1h 00m 05s`, `3d 04h 00m`."""
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02}h {minutes:02}m"
    if hours:
        return f"{hours}h {minutes:02}m {s:02}s"
    return f"{minutes}m {s:02}s" if minutes else f"{s}s"
