"""One self-contained HTML page: the tree as JSON, the viewer's JS and CSS inline.

Nothing is fetched: the page works from a file:// URL on a host with no
network, and can be mailed or attached to a ticket as one file. The tree is
embedded as column arrays of small integers with interned strings (see
tree.py), in a `<script type="application/json">` block the viewer reads with
JSON.parse, which browsers parse several times faster than the same data
as a JavaScript literal. Every `<` in it is written `\\u003c`, so no
function name (C++ templates are full of `<`) can close the script block.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from xml.sax.saxutils import escape

from agent.tools.flamegraph import style
from agent.tools.flamegraph.graph import Graph

_HINT = "Click a frame to zoom, Back or Esc to zoom out, / to search."


def render_html(graph: Graph) -> str:
    """The whole page as text."""
    css = _asset("viewer.css")
    js = _asset("viewer.js")
    title = escape(graph.title)
    body = (
        '<p id="fg-empty">This profile has no samples: there is nothing to draw.</p>\n'
        if graph.empty
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{css}</style>\n</head>\n<body>\n"
        "<header>\n"
        f'<h1>{title} <small id="fg-zoomed"></small></h1>\n'
        '<div id="fg-controls">\n'
        '<button id="fg-reset" type="button" disabled>Reset zoom</button>\n'
        '<label>Sample type <select id="fg-type"></select></label>\n'
        '<button id="fg-orient" type="button" aria-pressed="false">'
        "Flame (root at bottom)</button>\n"
        '<input id="fg-search" type="search" placeholder="Search functions (regex)" '
        'aria-label="Search functions">\n'
        '<span id="fg-matched" role="status"></span>\n'
        '<span id="fg-summary"></span>\n'
        f'<span class="hint">{_HINT}</span>\n'
        "</div>\n"
        '<div id="fg-legend" aria-label="Legend"></div>\n'
        "</header>\n"
        f"{body}"
        '<main id="fg-chart" aria-label="Flame graph frames"></main>\n'
        '<div id="fg-tooltip" role="tooltip" hidden></div>\n'
        "<noscript>This flame graph needs JavaScript to draw.</noscript>\n"
        f'<script type="application/json" id="fg-data">{payload_json(graph)}</script>\n'
        f"<script>\n{js}</script>\n</body>\n</html>\n"
    )


def payload(graph: Graph) -> dict[str, Any]:
    """What viewer.js reads: the flattened tree and how to show it."""
    tree = graph.tree
    families = [style.family(kind) for kind in tree.kinds]
    legend = list(style.FAMILIES) + sorted(
        {f for f in families if f not in style.FAMILIES and f != "root"}
    )
    columns, scaled = _compact_columns(tree.columns)
    return {
        "title": graph.title,
        "diff": graph.diff,
        "empty": graph.empty,
        "types": [[st.type, st.unit] for st in graph.sample_types],
        "defaultType": graph.default_type,
        "names": tree.names,
        "files": tree.files,
        "kinds": tree.kinds,
        "families": families,
        "legend": legend,
        "palette": {name: [*base, *spread] for name, (base, spread) in style.PALETTE.items()},
        "funcs": {
            "name": tree.func_name,
            "kind": [
                k * 2 + int(inl) for k, inl in zip(tree.func_kind, tree.func_inlined, strict=True)
            ],
            "file": tree.func_file,
            "line": tree.func_line,
        },
        "func": tree.func,
        "size": [end - i for i, end in enumerate(tree.end)],
        "lines": [x for node_line in sorted(tree.lines.items()) for x in node_line],
        "columns": columns,
        "scaled": scaled,
    }


def _compact_columns(
    columns: list[list[int]],
) -> tuple[list[list[int] | None], dict[int, list[int]]]:
    """Columns that are another column times a constant are sent as that
    column's index and the factor: pprof CPU profiles carry samples/count
    and cpu/nanoseconds, the second being the first times the period."""
    out: list[list[int] | None] = list(columns)
    scaled: dict[int, list[int]] = {}
    for c, column in enumerate(columns):
        for b in range(c):
            base = columns[b]
            if out[b] is None or not base[0] or column[0] % base[0]:
                continue
            factor = column[0] // base[0]
            if all(v == w * factor for v, w in zip(column, base, strict=True)):
                out[c], scaled[c] = None, [b, factor]
                break
    return out, scaled


def payload_json(graph: Graph) -> str:
    text = json.dumps(payload(graph), separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c")


def _asset(name: str) -> str:
    return resources.files("agent.tools.flamegraph").joinpath(name).read_text(encoding="utf-8")
