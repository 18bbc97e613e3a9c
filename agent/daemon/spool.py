"""A bounded on-disk spool of requests the collector has not taken yet.

When the collector stays down longer than the retry budget, requests are
written here (one file each, named by a sequence number so the oldest sorts
first) instead of piling up in memory. When the total size passes the cap
the oldest files are dropped and counted: recent profiles are worth more
than old ones. The spool survives restarts: files left by a previous run are
picked up and sent once the collector answers.

The directory is the agent's own (0700; a symlink, another user's or a
shared one is a ConfigError at start) and each file is 0600, written under a fresh O_EXCL|
O_NOFOLLOW temporary name and renamed into place (agent/safewrite.py).
A file read back must be a regular file of ours, no larger than the cap,
and pass `check` (the runner's: it parses as an export request). One that
does not -- a disk error, a crash's debris, a symlink -- is corrupt: it is
renamed NAME.corrupt beside the others (at most MAX_CORRUPT kept, for a
post-mortem; beyond that, deleted) and counted, and the next one is sent.
Before this, one such file stopped exporting on every restart.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from agent.safewrite import agent_dir, write_atomic
from symbolizer.safeopen import open_regular, read_bounded

log = logging.getLogger("bpfprof.spool")

SUFFIX = ".otlp"
CORRUPT = ".corrupt"
MAX_CORRUPT = 4

Check = Callable[[bytes], object]  # raises ValueError (or a subclass) for a corrupt payload


class Spool:
    def __init__(self, directory: Path, max_bytes: int, check: Check | None = None) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.check = check
        self.dropped = 0
        self.corrupt = 0
        self._lock = threading.Lock()
        self._files: list[tuple[int, Path, int]] = []  # (seq, path, size), oldest first
        agent_dir(self.dir, "spool.dir")
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                seq, st = int(p.stem), p.lstat()
            except (ValueError, OSError):
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                self._set_aside(p, "not a regular file" if st.st_size <= max_bytes else "too large")
                continue
            self._files.append((seq, p, st.st_size))
        for p in self.dir.glob(f".*{SUFFIX}.*tmp"):  # a write cut short by a crash
            p.unlink(missing_ok=True)
        self._files.sort()
        self._next = self._files[-1][0] + 1 if self._files else 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

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
            try:
                write_atomic(path, payload)
            except OSError as e:
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
        """The oldest sound request (its id and bytes), without removing
        it; corrupt ones on the way are set aside."""
        while True:
            with self._lock:
                if not self._files:
                    return None
                seq, path, _ = self._files[0]
            try:
                return seq, self._read(path)
            except FileNotFoundError:  # removed under us: forget it
                self.remove(seq)
            except (OSError, ValueError) as e:
                self._forget(seq)
                self._set_aside(path, str(e))

    def _read(self, path: Path) -> bytes:
        with open_regular(str(path), owner=os.geteuid()) as f:
            data = read_bounded(f, self.max_bytes)
        if self.check is not None:
            self.check(data)
        return data

    def remove(self, seq: int) -> None:
        path = self._forget(seq)
        if path is not None:
            path.unlink(missing_ok=True)

    def _forget(self, seq: int) -> Path | None:
        with self._lock:
            for i, (s, path, _) in enumerate(self._files):
                if s == seq:
                    del self._files[i]
                    return path
        return None

    def _set_aside(self, path: Path, why: str) -> None:
        """Rename a corrupt entry NAME.corrupt, or delete it once
        MAX_CORRUPT are kept: a disk that keeps failing cannot fill up."""
        self.corrupt += 1
        kept = len(list(self.dir.glob(f"*{SUFFIX}{CORRUPT}")))
        try:
            if kept < MAX_CORRUPT:
                os.rename(path, path.with_name(path.name + CORRUPT))
                done = f"moved aside as {path.name}{CORRUPT}"
            else:
                path.unlink()
                done = f"deleted ({MAX_CORRUPT} corrupt files are kept already)"
        except OSError as e:  # a directory, say: skipped until the next start
            done = f"left in place: {e.strerror}"
        log.warning("corrupt spool file %s (%s): %s", path, why, done)
