"""`bpfprof top`: the top functions of a profile, laid out as `pprof -top`.

Users compare this with `go tool pprof -top` side by side, so the numbers
follow pprof's rules: flat is charged to the innermost frame of the leaf
location (an inlined callee counts as its own function), cum counts a
function once per sample however often it recurs, percentages are of the
sum of absolute values, and values carry pprof's auto-scaled units. Code
with no function name is one row per binary, as pprof's default (function)
granularity has it: `[libz.so.1]`, not one row per address; `<unknown>`
where there is no mapping either. (pprof brackets `[kernel.kallsyms]` once
more; we keep the name perf users know.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from agent import model

# (pprof's canonical unit name, factor in base units); the base unit first.
_TIME = [("ns", 1.0), ("us", 1e3), ("ms", 1e6), ("s", 1e9), ("hrs", 3600e9)]
_BYTES = [("B", 1.0), ("kB", 2.0**10), ("MB", 2.0**20), ("GB", 2.0**30), ("TB", 2.0**40)]
_BYTES.append(("PB", 2.0**50))
# A sample unit (singular, lower case) → its scale and its size in base units.
_UNITS: dict[str, tuple[list[tuple[str, float]], float]] = {
    "nanosecond": (_TIME, 1.0),
    "ns": (_TIME, 1.0),
    "microsecond": (_TIME, 1e3),
    "us": (_TIME, 1e3),
    "millisecond": (_TIME, 1e6),
    "ms": (_TIME, 1e6),
    "second": (_TIME, 1e9),
    "s": (_TIME, 1e9),
    "byte": (_BYTES, 1.0),
    "b": (_BYTES, 1.0),
}


def format_top(
    profile: model.Profile,
    sample_index: str | int | None = None,
    count: int = 10,
    by_cum: bool = False,
) -> str:
    """The header and the `count` heaviest functions, by flat (or cum) value."""
    idx = profile.sample_index(sample_index)
    sample_type = profile.sample_types[idx]
    flat, cum = tally(profile, idx)
    total = sum(abs(s.values[idx]) for s in profile.samples)

    def order(name: str) -> tuple[int, str, int]:
        first, second = (cum, flat) if by_cum else (flat, cum)
        return (-abs(first[name]), name, -abs(second[name]))

    names = sorted(cum, key=order)
    shown = names[: max(count, 0)]
    unit = sample_type.unit
    lines = [f"Type: {sample_type.type}"]
    if profile.duration_nanos > 0:
        lines.append(f"Duration: {scaled_label(profile.duration_nanos, 'nanoseconds')}")
    lines.append(f"Total: {scaled_label(total, unit)}")
    lines.append(f"Showing top {len(shown)} of {len(names)} functions")
    lines.append(f"{'flat':>10} {'flat%':>6} {'sum%':>6} {'cum':>10} {'cum%':>6}  name")
    running = 0
    for name in shown:
        running += flat[name]
        lines.append(
            f"{scaled_label(flat[name], unit):>10} {percentage(flat[name], total)} "
            f"{percentage(running, total)} {scaled_label(cum[name], unit):>10} "
            f"{percentage(cum[name], total)}  {name}"
        )
    return "\n".join(lines) + "\n"


def tally(profile: model.Profile, idx: int) -> tuple[Counter[str], Counter[str]]:
    """Flat and cumulative value per function name for sample type `idx`."""
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for sample in profile.samples:
        value = sample.values[idx]
        names = list(_function_names(sample.locations))
        if not names:
            continue
        flat[names[0]] += value
        for name in set(names):
            cum[name] += value
    return flat, cum


def _function_names(locations: tuple[model.Location, ...]) -> Iterator[str]:
    """Names leaf first, each inlined frame its own, innermost first."""
    for loc in locations:
        if not loc.frames:
            yield unnamed(loc)
        for frame in loc.frames:
            yield frame.function or unnamed(loc)


def unnamed(loc: model.Location) -> str:
    """The row of code without a function name: its binary, as pprof names it."""
    if loc.mapping is None or not loc.mapping.file:
        return "<unknown>"
    base = loc.mapping.file.rsplit("/", 1)[-1]
    return base if base.startswith("[") and base.endswith("]") else f"[{base}]"


def scaled_label(value: int, unit: str) -> str:
    """`value` in the largest unit it reaches at least 1 of, as pprof prints
    it: two decimals, ".00" dropped; units pprof does not know stay plain."""
    number, suffix = float(value), ""
    scale = _UNITS.get(unit.lower()) or _UNITS.get(unit.lower().removesuffix("s"))
    if scale is not None:
        units, base = scale
        magnitude = abs(value) * base
        for name, factor in units:
            if magnitude >= factor:
                number, suffix = math.copysign(magnitude / factor, value), name
    text = f"{number:.2f}".removesuffix(".00")
    return "0" if text in ("0", "-0") else text + suffix


def percentage(value: int, total: int) -> str:
    """Six columns, as pprof: "  100%", "60.00%", " 0.51%", "    0%"."""
    ratio = abs(value / total) * 100 if total else 0.0
    if 99.95 <= ratio <= 100.05:
        return "  100%"
    if ratio >= 1.0:
        return f"{ratio:5.2f}%"
    return f"{ratio:5.2g}%"
