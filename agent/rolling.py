"""Rolling pprof files: what the agent does with no collector configured.

One gzipped pprof file per profile type per interval, named
`<UTC time>-<type>.pb.gz` so names sort by time, written atomically (a
reader never sees half a file). Retention keeps at most `max_files` files
and `max_bytes` bytes, removing the oldest first, so a host left alone for
months does not fill its disk.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from agent.delivery import Failure

log = logging.getLogger("bpfprof.files")

SUFFIX = ".pb.gz"


def file_name(type_name: str, when: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    return f"{stamp}.{int(when * 1000) % 1000:03d}Z-{type_name}{SUFFIX}"


class RollingFiles:
    def __init__(self, directory: Path, max_files: int, max_bytes: int) -> None:
        self.dir = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.removed = 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def send(self, name: str, payload: bytes) -> str:
        """Write one file (the Delivery sink signature); then apply retention."""
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise Failure(f"cannot write {path}: {e.strerror}", retryable=False) from None
        self.prune()
        return ""

    def prune(self) -> None:
        files = []
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                files.append((p, p.stat().st_size))
            except OSError:
                continue
        total = sum(size for _, size in files)
        while files and (len(files) > self.max_files or total > self.max_bytes):
            p, size = files.pop(0)
            p.unlink(missing_ok=True)
            total -= size
            self.removed += 1
