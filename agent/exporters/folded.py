"""The model as folded stacks: `root;caller;leaf count`, one line per stack.

This is the input format of flamegraph.pl, speedscope and inferno, which
split a line at its last space and its frames at ';'. So names are made
safe for that (';' and line breaks replaced), inlined frames become frames
of their own (an inlined call is still a call to whoever reads the graph),
and an unsymbolized frame shows its module and offset rather than vanish.
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
        stack = folded_stack(sample.locations)
        totals[stack] = totals.get(stack, 0) + sample.values[idx]
    return "".join(
        f"{';'.join(stack)} {value}\n" for stack, value in sorted(totals.items()) if value
    )


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
