"""`bpfprof record --capture DIR`: save what the pipeline below the kernel needs.

A capture is what a recording fed the stages after the kernel: the raw
samples as drained from the source, each sampled process's /proc/PID/maps
text (as the symbolizer saw it, every snapshot), the build IDs of the files
those maps name (the files themselves with --capture-binaries), the kernel
symbols its kernel stacks hit, and the profile type and options. Replayed
(agent/record/replay.py) without root or the original host, it gives the same
profile: a bug seen on a host becomes a unit test.

Readable files, so a capture can be read and edited by hand:

    capture.json      version, profile type, source options, time, counters
    samples.jsonl     one RawSample a line (addresses in hex), in drain order
    processes.jsonl   one process a line: pid, name, exe, container, maps files
    maps/PID.N.txt    the Nth maps text of PID, verbatim
    files.jsonl       one mapped executable file a line: path, dev, inode,
                      build ID, size, and where its copy is ("" if none)
    files/NAME        the copies (by build ID)
    kallsyms          the kernel symbols the samples' kernel addresses hit
    python.jsonl      one Python process a line: its interpreter (path,
                      version, where its eval loop runs) and the decoded
                      code objects met (name, file, first line, line table
                      in hex), so Python frames replay to the same names

A capture names processes and holds their stacks and binaries, as a
profile does: a 0700 directory of 0600 files (symbolizer/safewrite.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.config import SourceOptions
from agent.model import RawKey, RawSample, RawStack
from agent.sources.base import PythonCodeSource, SampleSource, SnapshotSource
from symbolizer import MapEntry, Symbolizer, parse_maps, read_build_id
from symbolizer.cpython.code import CodeInfo
from symbolizer.cpython.names import PythonNames, SavedTarget
from symbolizer.elf import ElfError
from symbolizer.process import open_mapped
from symbolizer.safeopen import read_bounded
from symbolizer.safewrite import private_dir, write_atomic

VERSION = 1
MAX_BINARY = 64 << 20  # larger files are named by build ID, not copied


def sample_record(sample: RawSample, live: bool = False) -> dict[str, Any]:
    """One samples.jsonl line: a RawSample, addresses in hex for the reader."""
    key, stack = sample.key, sample.key.stack
    out: dict[str, Any] = {"pid": key.pid, "tid": key.tid, "comm": key.comm}
    if key.tag:
        out["tag"] = key.tag
    out["user"] = [f"{a:#x}" for a in stack.user]
    out["kernel"] = [f"{a:#x}" for a in stack.kernel]
    if stack.user_error:
        out["user_error"] = stack.user_error
    if stack.kernel_error:
        out["kernel_error"] = stack.kernel_error
    out["values"] = list(sample.values)
    if live:
        out["live"] = True  # from live_heap(): added once, at the profile's end
    return out


def sample_from(record: dict[str, Any]) -> RawSample:
    stack = RawStack(
        user=tuple(int(a, 16) for a in record["user"]),
        kernel=tuple(int(a, 16) for a in record["kernel"]),
        user_error=int(record.get("user_error", 0)),
        kernel_error=int(record.get("kernel_error", 0)),
    )
    key = RawKey(record["pid"], record["tid"], record["comm"], stack, record.get("tag", ""))
    return RawSample(key, tuple(int(v) for v in record["values"]))


def options_from(record: dict[str, Any]) -> SourceOptions:
    """SourceOptions back from capture.json (as dataclasses.asdict wrote them)."""
    from agent.config import BpfLimits

    fields = dict(record)
    fields["limits"] = BpfLimits(**fields.get("limits", {}))
    fields["prewarm"] = tuple(fields.get("prewarm", ()))
    return SourceOptions(**fields)


def jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def file_name(build_id: str, entry: MapEntry) -> str:
    """The name of a file's copy: its build ID, else its device and inode."""
    return build_id or f"{entry.dev.replace(':', '-')}-{entry.inode}"


class Capture:
    """Collects a recording's inputs as it runs; `save` writes them."""

    def __init__(self, directory: Path, binaries: bool = False) -> None:
        """Creates the directory now (a bad one fails before recording)."""
        self.directory = private_dir(directory)
        self.binaries = binaries
        self._maps: dict[int, list[str]] = {}
        self._files: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.samples: list[dict[str, Any]] = []
        if binaries:
            private_dir(directory / "files")

    def note_maps(self, pid: int, text: str) -> None:
        """Keep a maps text the collection read for `pid` (each distinct one)."""
        snapshots = self._maps.setdefault(pid, [])
        if not snapshots or snapshots[-1] != text:
            snapshots.append(text)
            for entry in parse_maps(text):
                if entry.is_exec and entry.is_file:
                    self._note_file(pid, entry)

    def _note_file(self, pid: int, entry: MapEntry) -> None:
        """A mapped file's build ID, and its copy if asked and small. Opened
        as the symbolizer opens it (process.open_mapped, docs/security.md)."""
        key = (entry.path, entry.dev, entry.inode)
        if key in self._files:
            return
        row: dict[str, Any] = {"path": entry.path, "dev": entry.dev, "inode": entry.inode}
        row.update(build_id="", size=0, stored="")
        self._files[key] = row
        try:
            f, _place = open_mapped(pid, entry)
            with f:
                row["build_id"] = read_build_id(f) or ""
                row["size"] = os.fstat(f.fileno()).st_size
                if self.binaries and row["size"] <= MAX_BINARY:
                    f.seek(0)
                    name = file_name(row["build_id"], entry)
                    write_atomic(self.directory / "files" / name, read_bounded(f, MAX_BINARY))
                    row["stored"] = f"files/{name}"
        except (OSError, ElfError):
            pass  # kept with what is known: replay leaves its frames unsymbolized

    def wrap(self, source: SampleSource) -> SampleSource:
        """`source`, with what it drains (and its live heap) kept here."""
        if isinstance(source, SnapshotSource):
            return _CapturingSnapshotSource(source, self)
        return _CapturingSource(source, self)

    def save(
        self,
        profile_type: str,
        options: SourceOptions,
        time_nanos: int,
        duration_nanos: int,
        counters: dict[str, int],
        symbolizer: Symbolizer,
        container_id: Callable[[int], str],
        python: PythonNames | None = None,
    ) -> None:
        """`python`: the collection's Python names, read now (after the
        profile was built, so every code object its frames met is held)."""
        d = self.directory
        private_dir(d / "maps")
        meta = {
            "version": VERSION,
            "profile_type": profile_type,
            "options": dataclasses.asdict(options),
            "time_nanos": time_nanos,
            "duration_nanos": duration_nanos,
            "counters": counters,
        }
        write_atomic(d / "capture.json", (json.dumps(meta, indent=1) + "\n").encode())
        write_atomic(d / "samples.jsonl", jsonl(self.samples))
        pids = sorted({r["pid"] for r in self.samples} | set(self._maps))
        procs = []
        for pid in pids:
            names = []
            for n, text in enumerate(self._maps.get(pid, ())):
                names.append(f"maps/{pid}.{n}.txt")
                write_atomic(d / names[-1], text.encode("utf-8", "surrogateescape"))
            procs.append(
                {
                    "pid": pid,
                    "name": symbolizer.process_name(pid),
                    "exe": symbolizer.executable_path(pid),
                    "container_id": container_id(pid),
                    "maps": names,
                }
            )
        write_atomic(d / "processes.jsonl", jsonl(procs))
        write_atomic(d / "files.jsonl", jsonl(self._files.values()))
        write_atomic(d / "kallsyms", kernel_symbols(self.samples, symbolizer).encode())
        saved = [(pid, python.saved(pid)) for pid in pids] if python is not None else []
        rows = [python_record(pid, *kept) for pid, kept in saved if kept is not None]
        write_atomic(d / "python.jsonl", jsonl(rows))


def python_record(pid: int, target: SavedTarget, codes: dict[int, CodeInfo]) -> dict[str, Any]:
    """One python.jsonl line: a process's interpreter and its code objects."""
    return {
        "pid": pid,
        "path": target.path,
        "version": list(target.version),
        "eval_ranges": [[f"{lo:#x}", f"{hi:#x}"] for lo, hi in target.eval_ranges],
        "text": [[f"{lo:#x}", f"{hi:#x}"] for lo, hi in target.text],
        "split_loop": target.split_loop,
        "codes": {
            f"{address:#x}": {
                "name": info.name,
                "file": info.filename,
                "first": info.firstlineno,
                "linetable": info.linetable.hex(),
            }
            for address, info in sorted(codes.items())
        },
    }


def python_from(record: dict[str, Any]) -> tuple[SavedTarget, dict[int, CodeInfo]]:
    def ranges(rows: list[list[str]]) -> tuple[tuple[int, int], ...]:
        return tuple((int(lo, 16), int(hi, 16)) for lo, hi in rows)

    major, minor = record["version"]
    target = SavedTarget(
        record["path"],
        (int(major), int(minor)),
        ranges(record["eval_ranges"]),
        ranges(record["text"]),
        bool(record.get("split_loop", False)),
    )
    codes = {
        int(address, 16): CodeInfo(
            c["name"], c["file"], int(c["first"]), bytes.fromhex(c["linetable"])
        )
        for address, c in record["codes"].items()
    }
    return target, codes


def kernel_symbols(samples: list[dict[str, Any]], symbolizer: Symbolizer) -> str:
    """kallsyms lines for the symbols the samples' kernel addresses hit,
    looked up as the resolver does (a return address at address - 1): with
    no other symbol among them, each address finds the same one again."""
    table = symbolizer.kernel_symbols()
    found = {}
    for record in samples:
        for i, text in enumerate(record["kernel"]):
            sym = table.lookup(int(text, 16) - (1 if i else 0))
            if sym is not None:
                found[sym.start] = sym
    lines = []
    for start in sorted(found):
        sym = found[start]
        lines.append(f"{start:x} T {sym.name}" + (f"\t[{sym.module}]" if sym.module else ""))
    return "".join(line + "\n" for line in lines)


class _CapturingSource:
    """A SampleSource that keeps a copy of every drained sample."""

    def __init__(self, inner: SampleSource, capture: Capture) -> None:
        self.inner = inner
        self.capture = capture

    def add_targets(self, pids: Iterable[int]) -> None:
        self.inner.add_targets(pids)

    def start(self) -> None:
        self.inner.start()

    def poll(self, timeout_ms: int, on_new_process: Callable[[int], None]) -> None:
        self.inner.poll(timeout_ms, on_new_process)

    def drain(self) -> list[RawSample]:
        samples = self.inner.drain()
        self.capture.samples.extend(sample_record(s) for s in samples)
        return samples

    def counters(self) -> dict[str, int]:
        return self.inner.counters()

    def python_codes(self) -> list[tuple[int, int]]:
        """The inner source's new code objects, if it walks Python frames."""
        if isinstance(self.inner, PythonCodeSource):
            return self.inner.python_codes()
        return []

    def close(self) -> None:
        self.inner.close()


class _CapturingSnapshotSource(_CapturingSource):
    """The same for a source with a live heap (alloc's inuse_*)."""

    def live_heap(self) -> list[RawSample]:
        assert isinstance(self.inner, SnapshotSource)
        samples = self.inner.live_heap()
        self.capture.samples.extend(sample_record(s, live=True) for s in samples)
        return samples
