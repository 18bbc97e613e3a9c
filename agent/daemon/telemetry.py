"""The agent's own health: counters, one log line per interval, a status file.

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
    age = now - float(status.get("updated", 0))
    state = status.get("state", "?")
    interval = float(status.get("interval", 10))
    if state == "running" and age > 3 * interval + 5:
        state = f"stale (no update for {age:.0f}s: is the agent still running?)"
    lines.append(f"state:      {state}")
    for key in ("pid", "started", "config", "exporting_to", "profiles", "intervals"):
        if key in status:
            lines.append(f"{key + ':':<11} {status[key]}")
    totals = status.get("totals", {})
    last = status.get("last_interval", {})
    lines.append(f"{'counter':<22}{'last interval':>15}{'total':>15}")
    for k in FIELDS:
        if k in last or k in totals:
            lines.append(f"{k:<22}{last.get(k, ''):>15}{totals.get(k, ''):>15}")
    return "\n".join(lines) + "\n"
