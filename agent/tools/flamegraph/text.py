"""The words on a frame: its hover title and where it is in the source.

Values carry pprof's units (`scaled_label`: 1.5s, 20.2ms, 4MB) and a share
of the whole profile; a differential frame says its share before and after
and the change in percentage points, the numbers `bpfprof diff` prints.
"""

from __future__ import annotations

from agent.tools.flamegraph.graph import Graph
from agent.tools.flamegraph.tree import MIXED_LINES, Tree
from agent.tools.report import scaled_label


def location_text(tree: Tree, node: int) -> str:
    """file:line, or just the file when the node merges several lines."""
    file, line = tree.file(node), tree.line(node)
    if not file:
        return ""
    return f"{file}:{line}" if line > 0 and line != MIXED_LINES else file


def frame_title(graph: Graph, t: int, node: int) -> str:
    """One line: name, value and share (plain) or shares and change (diff)."""
    name = graph.tree.label(node)
    if graph.tree.inlined(node):
        name += " (inlined)"
    before, after = graph.shares(t, node)
    if graph.diff:
        return (
            f"{name} (before {before * 100:.2f}%, after {after * 100:.2f}%, "
            f"change {(after - before) * 100:+.2f} points)"
        )
    return f"{name} ({value_text(graph, t, graph.tree.columns[t][node])}, {after * 100:.2f}%)"


def value_text(graph: Graph, t: int, value: int) -> str:
    """20.2ms, 4MB; a count says what it counts: 6 samples, 3 contentions."""
    st = graph.sample_types[t]
    text = scaled_label(value, st.unit)
    return f"{text} {st.type}" if st.unit == "count" else text
