"""The CFI walker (bpf/unwind.h) as every sample source uses it.

A source that takes user stacks compiles its program with the walker when
the options ask for it (`unwind="dwarf"`, the default) and falls back to
its frame-pointer build, with one warning, when the kernel refuses the
walker's program (an older verifier's instruction limit). Once loaded, the
program's unwind maps are kept in step with the processes it sees by an
`UnwindLoader`: a process's tables are loaded when it is first announced,
again when the walker meets a mapping it was not told of (dlopen), and
after an exec.

Each loaded program has its own copy of the maps: the rows of libc go into
every program that walks it, from the same on-disk cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.config import BpfLimits, SourceOptions
from agent.errors import SetupError
from agent.kernel import bcc_loader
from agent.kernel.loaded import BpfProgram
from agent.kernel.unwind_maps import BccUnwindMaps
from agent.unwind.layout import E2BIG, STACK_TRUNCATED
from agent.unwind.loader import UnwindLoader, default_cache_dir
from agent.unwind.needed import needed_libraries
from agent.unwind.table import TableCache, TableError, load_unwind_info
from symbolizer.elf import ElfError, read_build_id
from symbolizer.safeopen import open_regular

log = logging.getLogger("bpfprof.unwind")


def unwind_cflags(limits: BpfLimits) -> list[str]:
    """The flags that turn on the CFI walker of bpf/unwind.h and size its maps."""
    return [
        "-DUNWIND_DWARF=1",
        f"-DUNWIND_ROWS={limits.unwind_rows}",
        f"-DUNWIND_MAPS={limits.unwind_mappings}",
        f"-DUNWIND_PROCS={limits.seen_entries}",
    ]


class Walker:
    """One program's walker: compiling with the fallback, loading tables,
    and its self-metrics. `active` is False with frame pointers only."""

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        self._options = options
        self._cache_dir = cache_dir
        self._maps: BccUnwindMaps | None = None
        self.loader: UnwindLoader | None = None
        self.maps_reloaded = 0  # reloads the walker asked for (dlopen)

    @property
    def wanted(self) -> bool:
        return self._options.unwind == "dwarf"

    @property
    def active(self) -> bool:
        """Whether user stacks are walked with CFI (False: frame pointers only)."""
        return self._maps is not None

    def compile(
        self,
        program: str,
        flags: Callable[[bool], list[str]],
        functions: Mapping[str, str] | None = None,
    ) -> BpfProgram:
        """The walker's build of `program` if wanted and accepted, else the
        frame-pointer one. `flags(unwind)` gives the -D flags of each;
        `functions` the program types (see bcc_loader.compile_program)."""
        if self.wanted:
            try:
                loaded = bcc_loader.compile_program(program, flags(True), functions)
            except SetupError as exc:
                if "run as root" in str(exc) and os.geteuid() != 0:
                    raise
                log.warning("user stacks fall back to frame pointers: %s", exc)
            else:
                self._maps = BccUnwindMaps(loaded)
                return loaded
        return bcc_loader.compile_program(program, flags(False), functions)

    def start(self, targets: Iterable[int]) -> None:
        """Make the loader, and load the processes already known."""
        if self._maps is None:
            return
        limits = self._options.limits
        self.loader = UnwindLoader(
            self._maps,
            max_rows=limits.unwind_rows,
            max_maps=limits.unwind_mappings,
            cache=TableCache(self._cache_dir or default_cache_dir()),
        )
        self.prewarm(self._options.prewarm)
        for pid in targets:
            self.loader.load(pid)

    def announce(
        self, pid: int, observe: Callable[[int], None] | None, *, changed: bool = False
    ) -> None:
        """A process was seen (again): snapshot it for the symbolizer and load
        its tables. Processes the user named (--pid, a command) get their
        tables first, so their next samples are walked whole; in whole-system
        mode the symbolizer's snapshot goes first, since a short-lived
        process may be gone by the time a cold table is built."""
        if bcc_loader.is_loader(pid):
            return  # bpfprof's own compiler at work (see bcc_loader)
        if self._options.filter_pids:
            self.load(pid, changed=changed)
        if observe is not None:
            observe(pid)
        if not self._options.filter_pids:
            self.load(pid, changed=changed)

    def prewarm(self, executables: Iterable[str]) -> None:
        """Build (into the disk cache) the tables of executables and the
        libraries they need, before they run: a held command then finds
        every table ready when it execs. Host paths of bpfprof's own
        COMMAND (its user's choice), read as regular files only."""
        if self.loader is None:
            return
        cache = self.loader.cache
        for path in [p for exe in executables for p in (exe, *needed_libraries(exe))]:
            try:
                with open_regular(path, nofollow=False) as f:
                    build_id = read_build_id(f)
                    if build_id and cache.get(build_id) is None:
                        load_unwind_info(f, build_id, cache)
            except (OSError, ElfError, TableError) as exc:
                log.debug("no unwind table for %s before start: %s", path, exc)

    def load(self, pid: int, *, changed: bool = False) -> None:
        """(Re)load one process's tables; `changed`: the walker asked for it."""
        if self.loader is not None:
            self.loader.load(pid)
        if changed:
            self.maps_reloaded += 1

    def counters(self) -> dict[str, int]:
        """The walker's and the loader's self-metrics, prefixed `unwind_`."""
        if self._maps is None or self.loader is None:
            return {}
        out = {f"unwind_{k}": v for k, v in self._maps.stats().items()}
        out.update({f"unwind_{k}": v for k, v in vars(self.loader.stats).items()})
        out["unwind_maps_reloaded"] = self.maps_reloaded
        return out


def read_unwound(user_stacks: Any, stack_id: int) -> tuple[tuple[int, ...], int]:
    """(ips leaf first, user_error) of one stack the walker stored in
    `ustacks` (bpf/ustacks.h); a stack cut at the frame limit gets -E2BIG."""
    if stack_id < 0:
        return (), stack_id
    try:
        leaf = user_stacks[user_stacks.Key(stack_id)]
    except KeyError:
        return (), 0
    return unwound_ips(leaf.ips, int(leaf.len), int(leaf.flags))


def unwound_ips(ips: Any, length: int, flags: int) -> tuple[tuple[int, ...], int]:
    """The first `length` ips of a walked stack and its user_error."""
    out = tuple(int(ip) for ip in ips[: min(length, len(ips))])
    return out, -E2BIG if flags & STACK_TRUNCATED else 0
