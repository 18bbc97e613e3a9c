"""Rolling pprof files: what the agent does with no collector configured.

One gzipped pprof file per profile type per interval, named
`<UTC time>-<type>.pb.gz` so names sort by time, written atomically (a
reader never sees half a file). The files name every process on the host
and their stacks: the directory is the agent's own, 0700 (an older one is
tightened; a symlink, another user's or a shared one like /tmp is refused
at start), and each file is 0600, created under an O_EXCL|O_NOFOLLOW
temporary name (agent/safewrite.py). Retention keeps at most `max_files` files
and `max_bytes` bytes, removing the oldest first, so a host left alone for
months does not fill its disk.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from agent.daemon.delivery import Failure
from agent.safewrite import agent_dir, write_atomic

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
        agent_dir(directory, "output.dir")

    def send(self, name: str, payload: bytes) -> str:
        """Write one file (the Delivery sink signature); then apply retention."""
        path = self.dir / name
        try:
            write_atomic(path, payload)
        except OSError as e:
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
