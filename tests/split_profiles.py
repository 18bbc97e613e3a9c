"""Profiles of the hotsplit ground truth, made with the model, at any split.

    main -> run -> work_a -> hot_a    share a
    main -> run -> work_b -> hot_b    share 1 - a

as tests/programs/hotsplit.c burns it (75/25), with its file and lines, so
flame graph and diff tests know exactly which frame must be how wide. A
second sample type weighs the other way round (hot_b heavier), to check a
viewer that switches sample types.
"""

from __future__ import annotations

from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType

BINARY = Mapping(0x400000, 0x500000, 0, "/opt/hotsplit", "abcd")
LINES = {"main": 47, "run": 37, "work_a": 31, "work_b": 32, "hot_a": 19, "hot_b": 27}


def _loc(name: str, n: int) -> Location:
    return Location(0x401000 + 0x100 * n, BINARY, (Frame(name, "hotsplit.c", LINES[name]),))


LOCS = {name: _loc(name, n) for n, name in enumerate(LINES)}


def split_profile(a: int, b: int, other: tuple[int, int] | None = None) -> Profile:
    """`a` samples in hot_a, `b` in hot_b; the second type weighs `other`
    (default: the reverse split) in bytes, as an allocation profile would."""
    other = other or (b, a)
    stack_a = tuple(LOCS[n] for n in ("hot_a", "work_a", "run", "main"))
    stack_b = tuple(LOCS[n] for n in ("hot_b", "work_b", "run", "main"))
    return Profile(
        sample_types=(ValueType("samples", "count"), ValueType("space", "bytes")),
        samples=[
            Sample(stack_a, (a, other[0] * 1024)),
            Sample(stack_b, (b, other[1] * 1024)),
        ],
        default_sample_type="samples",
    )
