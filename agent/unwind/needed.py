"""The shared libraries an executable will map, found the way ld.so does.

`record -- COMMAND` builds the unwind tables of the command's executable and
of the libraries it needs before releasing it: otherwise its first samples,
taken while the tables of a just-exec'd image are still being built, could
be walked with frame pointers only. Only the search order that matters on a
Linux distribution is followed: DT_RPATH (when there is no DT_RUNPATH),
LD_LIBRARY_PATH, DT_RUNPATH, the directories of /etc/ld.so.conf, then the
default directories. A library not found is skipped: its tables are built
when the process maps it, as for any process.

These are host paths of the command bpfprof itself is about to start, the
choice of the user running bpfprof; only regular files are read all the
same (a FIFO on the way would block the start).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from symbolizer.safeopen import open_regular

DEFAULT_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)
MAX_LIBRARIES = 256  # a bound on the walk, whatever the files say


def dynamic_entries(path: str) -> tuple[list[str], list[str]]:
    """(DT_NEEDED names, search directories from DT_RUNPATH/DT_RPATH) of an ELF
    file, $ORIGIN expanded; ([], []) for a static or unreadable file."""
    try:
        with open_regular(path, nofollow=False) as f:  # never a FIFO's open()
            elf = ELFFile(f)
            dynamic = elf.get_section_by_name(".dynamic")
            if not isinstance(dynamic, DynamicSection):
                return [], []
            needed, rpath, runpath = [], [], []
            tag: Any  # pyelftools sets needed/rpath/runpath by tag, untyped
            for tag in dynamic.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag == "DT_RPATH":
                    rpath.extend(tag.rpath.split(":"))
                elif tag.entry.d_tag == "DT_RUNPATH":
                    runpath.extend(tag.runpath.split(":"))
    except Exception:  # pyelftools raises many types on a malformed file
        return [], []
    origin = os.path.dirname(os.path.realpath(path))
    dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in runpath or rpath]
    return needed, [d for d in dirs if d]


def ld_so_conf_dirs(path: str = "/etc/ld.so.conf", depth: int = 0) -> list[str]:
    """The directories listed in ld.so.conf, following its `include` lines."""
    try:
        with open(path) as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
    except OSError:
        return []
    dirs: list[str] = []
    for line in filter(None, lines):
        if line.startswith("include ") and depth < 4:
            pattern = line.split(None, 1)[1]
            pattern = os.path.join(os.path.dirname(path), pattern)
            for inc in sorted(glob.glob(pattern)):
                dirs.extend(ld_so_conf_dirs(inc, depth + 1))
        elif line.startswith("/"):
            dirs.append(line)
    return dirs


def find_library(name: str, dirs: Iterable[str]) -> str | None:
    if "/" in name:
        return name if os.path.isfile(name) else None
    for d in dirs:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def needed_libraries(executable: str, system_dirs: Sequence[str] | None = None) -> list[str]:
    """The executable's libraries and theirs, breadth first, each once."""
    if system_dirs is None:
        system_dirs = [*ld_so_conf_dirs(), *DEFAULT_DIRS]
    env = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found: list[str] = []
    seen_names: set[str] = set()
    queue = [executable]
    while queue and len(found) < MAX_LIBRARIES:
        names, own_dirs = dynamic_entries(queue.pop(0))
        for name in names:
            if name in seen_names:
                continue
            seen_names.add(name)
            lib = find_library(name, [*env, *own_dirs, *system_dirs])
            if lib is not None:
                found.append(lib)
                queue.append(lib)
    return found
