"""The model as folded stacks: `root;caller;leaf count`, one line per stack.

This is the input format of flamegraph.pl, speedscope and inferno, which
split a line at its last space and its frames at ';'. So names are made
safe for that (';' and line breaks replaced), inlined frames become frames
of their own (an inlined call is still a call to whoever reads the graph),
and an unsymbolized frame shows its module and offset rather than vanish.
The root frame of each stack is its process (the executable's name, else
the thread's), as in the folded output of perf's stackcollapse and BCC's
`profile -f`, so one process's share is one box at the graph's base.
"""

from __future__ import annotations

from agent import model

_UNKNOWN = "[unknown]"


def encode(profile: model.Profile, sample_index: str | int | None = None) -> str:
    """Folded stacks for one sample type, summed per stack, sorted by stack.

    Stacks whose values sum to zero are left out: they add nothing to a
    flame graph, and folded readers reject or ignore a zero count anyway.
    """
    idx = profile.sample_index(sample_index)
    totals: dict[tuple[str, ...], int] = {}
    for sample in profile.samples:
        stack = process_frame(sample) + folded_stack(sample.locations)
        totals[stack] = totals.get(stack, 0) + sample.values[idx]
    return "".join(
        f"{';'.join(stack)} {value}\n" for stack, value in sorted(totals.items()) if value
    )


def process_frame(sample: model.Sample) -> tuple[str, ...]:
    """The process's root frame, or none when the sample does not name one."""
    name = sample.labels.get("process") or sample.labels.get("comm")
    return (sanitize(name),) if name else ()


def folded_stack(locations: tuple[model.Location, ...]) -> tuple[str, ...]:
    """Frame names root first, from a leaf-first stack of locations."""
    names = [name for loc in reversed(locations) for name in _location_names(loc)]
    return tuple(names) or (_UNKNOWN,)


def _location_names(loc: model.Location) -> list[str]:
    """Outermost first: a location's frames are stored innermost first."""
    if not loc.frames:
        return [sanitize(loc.display_name())]
    return [sanitize(frame.function) for frame in reversed(loc.frames)]


def sanitize(name: str) -> str:
    """A name that cannot split a frame or a line of the folded format."""
    cleaned = name.replace(";", ":").replace("\r", " ").replace("\n", " ").strip()
    return cleaned or _UNKNOWN
