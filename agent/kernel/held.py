"""bpfprof's own held COMMAND child (agent/record/command.py), before it execs.

`record -- COMMAND` forks a child that waits, as a copy of bpfprof, until the
probes are attached, then execs the command. Announced in that state (an
event for its pid can come before the exec), it would be loaded as what it
is then: bpfprof's own Python, libcrypto and the rest, whose unwind tables
take a second or more to build on a cold cache while the command's first
children start and exit unread. So the held child names itself HELD_COMM,
and a pid registered here whose comm still says so is skipped; the exec
gives it the command's name, and from then on it is the command.
"""

from __future__ import annotations

HELD_COMM = "bpfprof-held"

_held: set[int] = set()


def hold(pid: int) -> None:
    """`pid` is a held child of ours (until it execs)."""
    _held.add(pid)


def is_held(pid: int, proc_root: str = "/proc") -> bool:
    """Whether `pid` is our held child that has not exec'd yet."""
    if pid not in _held:
        return False
    try:
        with open(f"{proc_root}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            comm = f.read(64).strip()
    except OSError:  # gone
        comm = ""
    if comm == HELD_COMM:
        return True
    _held.discard(pid)  # it exec'd (or exited): from now on it is the command
    return False


def name_self() -> None:
    """Called by the held child: take HELD_COMM as its name."""
    with open("/proc/self/comm", "w", encoding="utf-8") as f:
        f.write(HELD_COMM)
