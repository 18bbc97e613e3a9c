"""A static SVG flame graph in the classic flamegraph.pl layout.

Root at the bottom, callees stacked above their callers, 1200 px wide, one
16 px row per stack depth, each frame a `<g>` holding a `<title>` (what
viewers show on hover), its `<rect>` and as much of its name as fits: the
whole name, or at least three characters and "..", else nothing. It
shows one sample type (the default, or `--sample-index`); the HTML page is
the one to switch types, zoom and search. Frames narrower than 0.1 px are
left out with everything above them, as flamegraph.pl's `--minwidth` does:
they cannot be seen, and a deep profile would otherwise weigh megabytes.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from agent.tools.flamegraph.graph import Graph
from agent.tools.flamegraph.style import diff_colour, frame_colour
from agent.tools.flamegraph.text import frame_title, location_text
from agent.tools.flamegraph.tree import Tree

WIDTH = 1200
ROW = 16
PAD = 10  # left and right margin
TOP = 40  # room for the title
BOTTOM = 16
MIN_WIDTH = 0.1  # px
FONT = 12
CHAR_WIDTH = 0.59 * FONT  # Verdana's mean advance, as flamegraph.pl assumes
# A cut name keeps at least this many characters, or the frame stays blank:
# "l.." says nothing (pprof's and speedscope's viewers leave it blank too).
MIN_CHARS = 3


def render_svg(graph: Graph) -> str:
    """The whole SVG document as text."""
    t = graph.default_type
    frames = [] if graph.empty else list(_layout(graph, t))
    depth = max((d for _, _, _, d in frames), default=0) + 1
    height = TOP + depth * ROW + BOTTOM
    largest = _largest_change(graph, t) if graph.diff else 0.0
    out = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}">\n',
        '<defs><linearGradient id="bg" x1="0" y1="0" x2="0" y2="1">'
        '<stop stop-color="#eeeeee" offset="5%"/><stop stop-color="#eeeeb0" offset="95%"/>'
        "</linearGradient></defs>\n",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="url(#bg)"/>\n',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-family="Verdana" '
        f'font-size="17">{escape(graph.title)}</text>\n',
    ]
    if graph.empty:
        out.append(
            f'<text x="{WIDTH / 2}" y="{TOP + ROW}" text-anchor="middle" font-family="Verdana" '
            f'font-size="{FONT}">This profile has no samples: nothing to draw.</text>\n'
        )
    out.append(f'<g font-family="Verdana" font-size="{FONT}">\n')
    for node, x, w, d in frames:
        y = height - BOTTOM - (d + 1) * ROW
        if graph.diff:
            before, after = graph.shares(t, node)
            fill = diff_colour(after - before, largest)
        else:
            fill = frame_colour(graph.tree.kind(node), graph.tree.label(node))
        out.append(_frame(graph, t, node, x, y, w, fill))
    out.append("</g>\n</svg>\n")
    return "".join(out)


def _frame(graph: Graph, t: int, node: int, x: float, y: int, w: float, fill: str) -> str:
    label = graph.tree.label(node)
    fits = int((w - 6) / CHAR_WIDTH)
    text = label if len(label) <= fits else ""
    if not text and fits >= MIN_CHARS + 2:
        text = label[: fits - 2] + ".."
    title = frame_title(graph, t, node)
    where = location_text(graph.tree, node)
    if where:
        title += f"\n{where}"
    return (
        f"<g><title>{escape(title)}</title>"
        f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" fill={quoteattr(fill)} '
        f'rx="2" ry="2"/>'
        + (f'<text x="{x + 3:.1f}" y="{y + ROW - 4}">{escape(text)}</text>' if text else "")
        + "</g>\n"
    )


def _layout(graph: Graph, t: int) -> list[tuple[int, float, float, int]]:
    """(node, x px, width px, depth) of every frame at least MIN_WIDTH wide."""
    usable = WIDTH - 2 * PAD
    tree: Tree = graph.tree
    frames = []
    todo = [(0, float(PAD), 0)]
    while todo:
        node, x, depth = todo.pop()
        w = graph.width(t, node) * usable
        frames.append((node, x, w, depth))
        for child in tree.children(node):
            cw = graph.width(t, child) * usable
            if cw >= MIN_WIDTH:
                todo.append((child, x, depth + 1))
            x += cw
    return frames


def _largest_change(graph: Graph, t: int) -> float:
    deltas = (graph.shares(t, i) for i in range(len(graph.tree)))
    return max((abs(after - before) for before, after in deltas), default=0.0)
