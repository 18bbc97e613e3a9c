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

from symbolizer.budget import ElfError
from symbolizer.elffile import ElfFile
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
            dynamic = ElfFile(f).dynamic()
    except (OSError, ElfError):
        return [], []
    needed, rpath, runpath = list(dynamic.needed), dynamic.rpath, dynamic.runpath
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


def preloaded(environ: dict[str, str] | None = None, conf: str = "/etc/ld.so.preload") -> list[str]:
    """The libraries ld.so loads before any DT_NEEDED: LD_PRELOAD's (spaces
    or colons between them), then /etc/ld.so.preload's, names or paths."""
    env = os.environ if environ is None else environ
    names = env.get("LD_PRELOAD", "").replace(":", " ").split()
    try:
        with open_regular(conf, nofollow=False) as f:
            names += f.read(1 << 16).decode(errors="replace").replace(":", " ").split()
    except OSError:
        pass
    return names


def needed_libraries(
    executable: str, system_dirs: Sequence[str] | None = None, preload: Sequence[str] = ()
) -> list[str]:
    """The executable's libraries and theirs, breadth first, each once;
    `preload` (names or paths, see preloaded()) before them, as ld.so does."""
    if system_dirs is None:
        system_dirs = [*ld_so_conf_dirs(), *DEFAULT_DIRS]
    env = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found: list[str] = []
    seen_names: set[str] = set()
    queue = [executable]
    preloads: set[str] = set()  # by real path: a file is loaded once, whatever it is called
    for name in preload:
        seen_names.add(name)
        lib = find_library(name, [*env, *system_dirs])
        if lib is not None and os.path.realpath(lib) not in preloads:
            preloads.add(os.path.realpath(lib))
            found.append(lib)
            queue.append(lib)
    while queue and len(found) < MAX_LIBRARIES:
        names, own_dirs = dynamic_entries(queue.pop(0))
        for name in names:
            if name in seen_names:
                continue
            seen_names.add(name)
            lib = find_library(name, [*env, *own_dirs, *system_dirs])
            if lib is not None and lib not in found:
                found.append(lib)
                queue.append(lib)
    return found
