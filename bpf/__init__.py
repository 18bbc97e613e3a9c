"""BPF C sources of bpfprof, shipped as package data (see agent/sources)."""

import re
from importlib.resources import files

_INCLUDE = re.compile(r'^#include "([\w.]+)"$', re.MULTILINE)


def source(name: str) -> str:
    """The text of one BPF source file shipped in this package."""
    return (files(__name__) / name).read_text()


def include_dir() -> str:
    """A directory holding the shared headers, for the compiler's -I."""
    return str(files(__name__))


def expanded(name: str) -> str:
    """The source with each `#include "X"` of a shipped header pasted in.

    BCC rewrites map calls (`table.lookup(...)`) only in the main file, so a
    header that declares and uses maps, such as unwind.h, must be part of
    it. Each header is pasted once (they have include guards anyway).
    """
    seen: set[str] = set()

    def paste(match: re.Match[str]) -> str:
        header = match.group(1)
        if header in seen or not (files(__name__) / header).is_file():
            return "" if header in seen else match.group(0)
        seen.add(header)
        return _INCLUDE.sub(paste, source(header))

    return _INCLUDE.sub(paste, source(name))
