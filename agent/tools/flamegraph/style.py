"""Frame colours: by frame kind, as flamegraph.pl's mixed-mode palettes.

A location's kind is the OpenTelemetry `profile.frame.type` (native,
kernel, cpython, hotspot, v8js, ...). A reader cares about four families,
so the legend has four colours: kernel orange, native red, JIT
green, interpreter aqua, as flamegraph.pl's `--color=java`/`js` palettes
taught people to read them. Within a family the shade is a hash of the
function name, so neighbours differ and one function keeps its colour
everywhere. The HTML viewer (viewer.js) applies the same rules.

A differential graph colours by change instead: red grew, blue shrank,
white stayed, saturated in proportion to the largest change.
"""

from __future__ import annotations

FAMILIES = ("kernel", "native", "jit", "interpreter")
_FAMILY_OF = {
    "kernel": "kernel",
    "native": "native",
    "go": "native",
    "jit": "jit",
    "hotspot": "jit",
    "jvm": "jit",
    "v8js": "jit",
    "dotnet": "jit",
    "beam": "jit",
    "phpjit": "jit",
    "interpreter": "interpreter",
    "cpython": "interpreter",
    "python": "interpreter",
    "php": "interpreter",
    "ruby": "interpreter",
    "perl": "interpreter",
    "luajit": "jit",
}
# (base r, g, b) and how far each channel moves with the name's hash.
PALETTE = {
    "kernel": ((230, 140, 0), (25, 40, 40)),
    "native": ((200, 50, 50), (55, 80, 80)),
    "jit": ((50, 185, 50), (60, 60, 60)),
    "interpreter": ((50, 160, 175), (60, 60, 60)),
    "other": ((165, 165, 165), (50, 50, 50)),
    "root": ((205, 205, 205), (0, 0, 0)),
}


def family(kind: str) -> str:
    """kernel, native, jit or interpreter; "other" for a kind we don't know."""
    if kind == "root":
        return "root"
    return _FAMILY_OF.get(kind.lower(), "other")


def name_hash(name: str) -> float:
    """A stable number in [0, 1) from a function name (viewer.js: nameHash)."""
    h = 0
    for ch in name:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return (h % 1000) / 1000


def frame_colour(kind: str, name: str) -> str:
    (r, g, b), (dr, dg, db) = PALETTE[family(kind)]
    v = name_hash(name)
    return f"rgb({r + int(dr * v)},{g + int(dg * v)},{b + int(db * v)})"


def diff_colour(delta: float, largest: float) -> str:
    """Red for growth, blue for shrinkage, white for none (viewer.js: diffColour)."""
    strength = min(1.0, abs(delta) / largest) if largest > 0 else 0.0
    other = 20 + round(235 * (1 - strength**0.7))
    if delta > 0:
        return f"rgb(255,{other},{other})"
    if delta < 0:
        return f"rgb({other},{other},255)"
    return "rgb(255,255,255)"
