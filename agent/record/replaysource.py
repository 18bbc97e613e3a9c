"""A capture (agent/record/capture.py) read back, and the SampleSource that replays it.

`ReplaySource` stands where a BPF source stands: `poll` reports each
captured process once (so the driver observes it, with its captured maps
text), the first `drain` hands over every captured sample and `live_heap`
what the allocation source saw still allocated. It needs no privileges and
touches neither the kernel nor /proc.

`Captured.open_file` is the symbolizer's opener for a replay: a mapping's
file is served from the capture (its copy, by path, device and inode as
the maps line names it), opened confined to the capture directory.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agent.config import SourceOptions
from agent.errors import UsageError
from agent.model import RawSample
from agent.record.capture import VERSION, options_from, python_from, sample_from
from symbolizer import MapEntry
from symbolizer.cpython.code import CodeInfo
from symbolizer.cpython.names import SavedTarget
from symbolizer.places import Place, open_place


@dataclass
class CapturedProcess:
    pid: int
    name: str
    exe: str
    container_id: str
    maps: list[str]  # every maps text captured, oldest first


@dataclass
class Captured:
    """A capture directory, loaded."""

    directory: Path
    profile_type: str
    options: SourceOptions
    time_nanos: int
    duration_nanos: int
    counters: dict[str, int]
    samples: list[RawSample]
    live: list[RawSample]
    processes: dict[int, CapturedProcess]
    files: dict[tuple[str, str, int], str]  # (path, dev, inode) -> its copy, "" if none
    # pid -> its interpreter and decoded code objects (python.jsonl)
    python: dict[int, tuple[SavedTarget, dict[int, CodeInfo]]] = field(default_factory=dict)

    def open_file(self, pid: int, entry: MapEntry) -> tuple[BinaryIO, Place]:
        """The copy of the file behind `entry` (Symbolizer's opener)."""
        stored = self.files.get((entry.path, entry.dev, entry.inode), "")
        if not stored:
            raise FileNotFoundError(errno.ENOENT, "not in the capture", entry.path)
        place = Place(str(self.directory), "/" + stored)
        return open_place(place), place


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load(directory: Path) -> Captured:
    """Read a capture; UsageError if it is not one this version reads."""
    try:
        meta = json.loads((directory / "capture.json").read_text())
        if meta.get("version") != VERSION:
            raise UsageError(f"{directory}: capture version {meta.get('version')}, not {VERSION}")
        samples: list[RawSample] = []
        live: list[RawSample] = []
        for record in _lines(directory / "samples.jsonl"):
            (live if record.get("live") else samples).append(sample_from(record))
        processes = {}
        for p in _lines(directory / "processes.jsonl"):
            maps = [
                (directory / name).read_text(encoding="utf-8", errors="surrogateescape")
                for name in p["maps"]
            ]
            processes[p["pid"]] = CapturedProcess(
                p["pid"], p["name"], p["exe"], p["container_id"], maps
            )
        rows = _lines(directory / "files.jsonl")
        files = {(f["path"], f["dev"], f["inode"]): f["stored"] for f in rows}
        py = directory / "python.jsonl"  # absent from captures made before Python frames
        python = {r["pid"]: python_from(r) for r in (_lines(py) if py.exists() else [])}
        return Captured(
            directory=directory,
            profile_type=meta["profile_type"],
            options=options_from(meta["options"]),
            time_nanos=meta["time_nanos"],
            duration_nanos=meta["duration_nanos"],
            counters=meta["counters"],
            samples=samples,
            live=live,
            processes=processes,
            files=files,
            python=python,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{directory} is not a readable capture: {exc}") from exc


class ReplaySource:
    """A SampleSource (and SnapshotSource) over a loaded capture."""

    def __init__(self, captured: Captured) -> None:
        self.captured = captured
        self._announced = False
        self._drained = False

    def add_targets(self, pids: Iterable[int]) -> None:
        """The capture already holds only what was targeted."""

    def start(self) -> None:
        """Nothing to load."""

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        """Every captured process, once, at the first poll (no waiting)."""
        if not self._announced:
            self._announced = True
            for pid in sorted(self.captured.processes):
                on_new_process(pid)

    def drain(self) -> list[RawSample]:
        if self._drained:
            return []
        self._drained = True
        return list(self.captured.samples)

    def live_heap(self) -> list[RawSample]:
        return list(self.captured.live)

    def counters(self) -> dict[str, int]:
        return dict(self.captured.counters)

    def close(self) -> None:
        """Nothing to free."""
