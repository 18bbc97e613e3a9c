"""Flame graphs of any pprof profile: interactive HTML, static SVG, and diffs.

    tree.py   stacks merged root first into one flattened call tree
    graph.py  what is drawn: sample types, plain or differential shares
    html.py   one self-contained page (viewer.js, viewer.css inlined)
    svg.py    the classic flamegraph.pl picture
    diff.py   `bpfprof diff`: the functions whose share changed most

`write_flamegraph` is what `bpfprof flamegraph` calls: the output format
comes from the file's suffix, as it does for `bpfprof record -o`.
"""

from __future__ import annotations

from pathlib import Path

from agent import model
from agent.errors import UsageError
from agent.exporters.output import write_atomically
from agent.tools.flamegraph.graph import Graph, diff_graph, plain_graph

FORMATS = {".html": "html", ".htm": "html", ".svg": "svg"}

__all__ = ["Graph", "diff_graph", "output_format", "plain_graph", "render", "write_flamegraph"]


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown flame graph format; name it .html or .svg")
    return fmt


def render(graph: Graph, fmt: str) -> str:
    if fmt == "svg":
        from agent.tools.flamegraph.svg import render_svg

        return render_svg(graph)
    from agent.tools.flamegraph.html import render_html

    return render_html(graph)


def write_flamegraph(
    profiles: list[model.Profile],
    output: Path,
    title: str,
    sample_index: str | None = None,
) -> Graph:
    """Draw one profile, or the change from profiles[0] to profiles[1], to `output`."""
    fmt = output_format(output)
    if len(profiles) == 2:
        graph = diff_graph(profiles[0], profiles[1], title, sample_index)
    else:
        graph = plain_graph(profiles[0], title, sample_index)
    write_atomically(output, render(graph, fmt).encode())
    return graph
