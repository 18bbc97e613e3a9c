"""`bpfprof diff BASE NEW`: which functions' share of the profile changed most.

Two profiles are rarely the same size (a longer run, a busier host), so they
are compared by share: each function's value as a fraction of its own
profile's total, as flamegraph.pl's `difffolded -n` and pprof's `-normalize`
do. The change is in percentage points, signed: positive grew. A function
present in only one profile counts as 0% in the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import model
from agent.errors import InvalidProfile
from agent.tools.report import scaled_label, tally


@dataclass(frozen=True)
class Change:
    """One function's share of the base and the new profile, 0..1 each."""

    name: str
    before: float
    after: float

    @property
    def delta(self) -> float:
        return self.after - self.before


def matching_indices(
    base: model.Profile, new: model.Profile, sample_index: str | int | None
) -> tuple[int, int]:
    """The same sample type in both profiles: resolved in the new one (its
    default when none is asked for), then found by name in the base."""
    new_idx = new.sample_index(sample_index)
    wanted = new.sample_types[new_idx].type
    for i, st in enumerate(base.sample_types):
        if st.type == wanted:
            return i, new_idx
    names = ", ".join(st.type for st in base.sample_types)
    raise InvalidProfile(f"the base profile has no sample type {wanted!r} (it has: {names})")


def function_changes(
    base: model.Profile,
    new: model.Profile,
    sample_index: str | int | None = None,
    by_cum: bool = False,
) -> list[Change]:
    """Every function of either profile, the largest |change| first."""
    base_idx, new_idx = matching_indices(base, new, sample_index)
    before = _shares(base, base_idx, by_cum)
    after = _shares(new, new_idx, by_cum)
    changes = [
        Change(name, before.get(name, 0.0), after.get(name, 0.0))
        for name in before.keys() | after.keys()
    ]
    changes.sort(key=lambda c: (-abs(c.delta), c.name))
    return changes


def _shares(profile: model.Profile, idx: int, by_cum: bool) -> dict[str, float]:
    flat, cum = tally(profile, idx)
    total = sum(abs(s.values[idx]) for s in profile.samples)
    values = cum if by_cum else flat
    return {name: (values[name] / total if total else 0.0) for name in cum}


def format_diff(
    base: model.Profile,
    new: model.Profile,
    sample_index: str | int | None = None,
    count: int = 10,
    by_cum: bool = False,
) -> str:
    """A header and the `count` functions whose share changed most."""
    base_idx, new_idx = matching_indices(base, new, sample_index)
    changes = function_changes(base, new, sample_index, by_cum)
    unit = new.sample_types[new_idx].unit
    totals = (
        scaled_label(sum(abs(s.values[idx]) for s in p.samples), unit)
        for p, idx in ((base, base_idx), (new, new_idx))
    )
    moved = [c for c in changes if round(c.delta * 100, 2) != 0]
    shown = moved[: max(count, 0)]
    which = "cum" if by_cum else "flat"
    lines = [
        f"Type: {new.sample_types[new_idx].type} ({which} share of each profile's total)",
        "Total: {} base, {} new".format(*totals),
        f"Showing top {len(shown)} of {len(moved)} functions whose share changed",
        f"{'before':>8} {'after':>8} {'change':>9}  name",
    ]
    lines += [
        f"{c.before * 100:7.2f}% {c.after * 100:7.2f}% {c.delta * 100:+8.2f}%  {c.name}"
        for c in shown
    ]
    return "\n".join(lines) + "\n"
