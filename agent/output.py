"""Write a profile to a file in the format asked for, atomically.

The file appears complete or not at all: a Ctrl-C or a full disk during the
write never leaves a truncated profile behind under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agent.errors import UsageError
from agent.model import Profile


def encode(profile: Profile, fmt: str) -> bytes:
    if fmt == "pprof":
        from agent.exporters import pprof

        return pprof.encode(profile)
    if fmt == "folded":
        from agent.exporters import folded

        # Folded stacks carry one number: the first sample type (for CPU, the
        # sample count), which is what flame graph tools expect.
        return folded.encode(profile, sample_index=0).encode()
    if fmt == "otlp":
        from agent.exporters import otlp

        return otlp.encode(profile)  # an OTLP ProfilesData message
    raise UsageError(f"unknown output format {fmt!r}")


def write_profile(profile: Profile, path: Path, fmt: str) -> int:
    """Encode and write; returns the number of bytes written."""
    return write_atomically(path, encode(profile, fmt))


def write_atomically(path: Path, data: bytes) -> int:
    """Write `data` under a temporary name, then rename it to `path`."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    return len(data)
