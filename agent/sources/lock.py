"""Lock contention from futex waits and kernel lock tracepoints (bpf/lock.bpf.c).

A contended pthread mutex ends in a futex wait; an uncontended one never
enters the kernel, so tracing the futex syscalls costs nothing for locks
that are never contended (unlike uprobes on pthread_mutex_lock, which trap
on every call). Kernel locks come from lock:contention_begin/end. Stacks are
taken when a wait ends, for every wait of 1 ms or more and for about one
short wait in `wait_sampling` (weighted, so counts and delays stay unbiased).

Each sample is tagged with the kind of wait the kernel could tell from the
futex operation ("mutex", "wait", "condvar", "kernel"); `classify` refines
it from the symbolized stack, where condition-variable waits (waiting, not
contention) are told apart from lock waits (see docs/profiles.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import SourceOptions
from agent.kernel import bcc_loader
from agent.kernel.layout import LOCK_KIND_CONDVAR, LOCK_KIND_KERNEL, LOCK_KIND_MUTEX, LOCK_KIND_WAIT
from agent.model import Location, RawKey, RawSample
from agent.sources.program import to_raw_key
from agent.sources.waits import WaitSource

PROGRAM = "lock.bpf.c"

KIND_NAMES = {
    LOCK_KIND_MUTEX: "mutex",
    LOCK_KIND_WAIT: "wait",
    LOCK_KIND_CONDVAR: "condvar",
    LOCK_KIND_KERNEL: "kernel",
}

# Functions whose presence in a stack says what a futex wait was for, most
# specific first. glibc's mutex slow path is __lll_lock_wait; its condition
# variables, rwlocks, semaphores and pthread_join all wait in
# __futex_abstimed_wait_common with FUTEX_WAIT_BITSET, so only the frames
# above it tell them apart.
CONDVAR_FUNCTIONS = (
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "__pthread_cond_wait",
    "__pthread_cond_timedwait",
    "__pthread_cond_clockwait",
    "__pthread_cond_wait_common",
    "cnd_wait",
    "cnd_timedwait",
    "std::condition_variable::wait",
    "std::_V2::condition_variable_any::wait",
)
RWLOCK_FUNCTIONS = (
    "pthread_rwlock_rdlock",
    "pthread_rwlock_wrlock",
    "pthread_rwlock_timedrdlock",
    "pthread_rwlock_timedwrlock",
    "pthread_rwlock_clockrdlock",
    "pthread_rwlock_clockwrlock",
    "__pthread_rwlock_rdlock",
    "__pthread_rwlock_wrlock",
    "__pthread_rwlock_rdlock_full",
    "__pthread_rwlock_wrlock_full",
)
MUTEX_FUNCTIONS = (
    "__lll_lock_wait",
    "__lll_lock_wait_private",
    "pthread_mutex_lock",
    "__pthread_mutex_lock",
    "pthread_mutex_timedlock",
    "pthread_mutex_clocklock",
    "__pthread_mutex_lock_full",
    "__pthread_mutex_clocklock_common",
    "mtx_lock",
    "mtx_timedlock",
)


def plain_name(name: str) -> str:
    """A libc symbol without glibc's internal alias prefix and version:
    `__GI___lll_lock_wait` is `__lll_lock_wait`, `pthread_cond_wait@@GLIBC_2.3.2`
    is `pthread_cond_wait` (the symbolizer may name either alias)."""
    return name.split("@", 1)[0].removeprefix("__GI_")


def classify(tag: str, functions: Sequence[str]) -> str:
    """The kind of a lock sample from its kernel tag and its stack's
    function names (leaf first): the stack wins where it is explicit, since
    the futex operation cannot tell a condition variable from an rwlock or a
    non-glibc mutex (Rust's std uses FUTEX_WAIT_BITSET for all three). The
    leaf-most known frame decides: a condition wait that, once woken, waits
    to take its mutex back (`__lll_lock_wait` under `pthread_cond_wait`)
    is mutex contention."""
    if tag == "kernel":
        return tag
    for name in map(plain_name, functions):
        if name.startswith(CONDVAR_FUNCTIONS):
            return "condvar"
        if name.startswith(RWLOCK_FUNCTIONS):
            return "rwlock"
        if name.startswith(MUTEX_FUNCTIONS):
            return "mutex"
    return tag or "wait"


def is_contention(kind: str) -> bool:
    """Condition-variable waits are waiting for work, not for a lock; a
    FUTEX_WAIT_BITSET wait whose stack names no lock function (glibc's
    pthread_join, sem_wait and condition variables all look like that when
    the stack stops in libc) is not claimed as contention either."""
    return kind in ("mutex", "rwlock", "kernel")


def lock_cflags(
    base: list[str],
    min_wait_us: int,
    sampling: int = 1,
    *,
    user: bool,
    kernel: bool,
    waitv: bool = False,
    futex2: bool = False,
) -> list[str]:
    """The program's flags: the minimum wait, the largest weight of a
    sampled short wait (1: every wait takes stacks), which halves to trace,
    and which futex2 syscalls' tracepoints the kernel has."""
    flags = [*base, f"-DMIN_WAIT_NS={min_wait_us * 1000}", f"-DMAX_WEIGHT={sampling}"]
    for name, on in (
        ("USER_LOCKS", user),
        ("KERNEL_LOCKS", kernel),
        ("FUTEX_WAITV", waitv),
        ("FUTEX2_WAIT", futex2),
    ):
        if on:
            flags.append(f"-D{name}=1")
    return flags


def has_tracepoint(tracefs: Path | None, group: str, name: str) -> bool:
    return tracefs is not None and (tracefs / "events" / group / name).is_dir()


class LockSource(WaitSource):
    """The lock SampleSource; values are (contentions, delay nanoseconds)."""

    PROGRAM = PROGRAM

    def __init__(self, options: SourceOptions, cache_dir: Path | None = None) -> None:
        super().__init__(options, cache_dir)

    def cflags(self, unwind: bool | None = None) -> list[str]:
        tracefs = bcc_loader.tracefs_dir()
        return lock_cflags(
            super().cflags(unwind),
            self._options.min_wait_us,
            self._options.wait_sampling,
            user=True,
            kernel=has_tracepoint(tracefs, "lock", "contention_begin"),
            waitv=has_tracepoint(tracefs, "syscalls", "sys_enter_futex_waitv"),
            futex2=has_tracepoint(tracefs, "syscalls", "sys_enter_futex_wait"),
        )

    def sample(self, key: Any, value: Any) -> RawSample:
        tag = KIND_NAMES.get(int(key.kind), "wait")
        raw = to_raw_key(key.base, self._cache, tag)
        return RawSample(raw, (int(value.count), int(value.total_ns)))


def lock_labels(key: RawKey, locations: tuple[Location, ...]) -> dict[str, str] | None:
    """The builder's hook: a `lock_kind` label, or None to leave the sample
    out of a contention profile."""
    functions = [f.function for loc in locations for f in loc.frames]
    kind = classify(key.tag, functions)
    if not is_contention(kind):
        return None
    return {"lock_kind": kind}
