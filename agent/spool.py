"""A bounded on-disk spool of requests the collector has not taken yet.

When the collector stays down longer than the retry budget, requests are
written here (one file each, named by a sequence number so the oldest sorts
first) instead of piling up in memory. When the total size passes the cap
the oldest files are dropped and counted: recent profiles are worth more
than old ones. The spool survives restarts: files left by a previous run are
picked up and sent once the collector answers.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("bpfprof.spool")

SUFFIX = ".otlp"


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        self._files: list[tuple[int, Path, int]] = []  # (seq, path, size), oldest first
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                self._files.append((int(p.stem), p, p.stat().st_size))
            except (ValueError, OSError):
                continue
        for p in self.dir.glob(f".*{SUFFIX}.tmp"):  # a write cut short by a crash
            p.unlink(missing_ok=True)
        self._files.sort()
        self._next = self._files[-1][0] + 1 if self._files else 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(size for _, _, size in self._files)

    def put(self, payload: bytes) -> None:
        """Write atomically, then drop the oldest while over the cap."""
        if len(payload) > self.max_bytes:
            self.dropped += 1
            log.warning("a %d-byte request is larger than the whole spool: dropped", len(payload))
            return
        with self._lock:
            seq = self._next
            self._next += 1
            path = self.dir / f"{seq:012d}{SUFFIX}"
            tmp = self.dir / f".{seq:012d}{SUFFIX}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(payload)
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                self.dropped += 1
                log.warning("cannot spool a request to %s: %s (dropped)", self.dir, e.strerror)
                return
            self._files.append((seq, path, len(payload)))
            total = sum(size for _, _, size in self._files)
            while total > self.max_bytes and self._files:
                _, old, size = self._files.pop(0)
                old.unlink(missing_ok=True)
                total -= size
                self.dropped += 1

    def peek(self) -> tuple[int, bytes] | None:
        """The oldest request (its id and bytes), without removing it."""
        while True:
            with self._lock:
                if not self._files:
                    return None
                seq, path, _ = self._files[0]
            try:
                return seq, path.read_bytes()
            except OSError:  # removed under us: forget it
                self.remove(seq)

    def remove(self, seq: int) -> None:
        with self._lock:
            for i, (s, path, _) in enumerate(self._files):
                if s == seq:
                    del self._files[i]
                    path.unlink(missing_ok=True)
                    return
