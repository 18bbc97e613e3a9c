"""The agent's own directories: symbolizer.safewrite, with refusals as
one-line ConfigErrors naming the setting (see docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from agent.errors import ConfigError
from symbolizer.safewrite import DIR_MODE, FILE_MODE, private_dir, write_atomic

__all__ = ["DIR_MODE", "FILE_MODE", "agent_dir", "private_dir", "write_atomic"]


def agent_dir(path: Path, what: str) -> Path:
    """private_dir for a directory the configuration names (`what`, e.g.
    "output.dir"): a refusal becomes a ConfigError, one line that names the
    setting, so `bpfprof run` stops at start-up (or a reload keeps the old
    config) instead of writing where others can reach."""
    try:
        return private_dir(path)
    except OSError as e:
        raise ConfigError(
            f"{what} {path}: {e.strerror or e}: the agent needs a directory of its own"
        ) from None
