"""What a flame graph shows: a tree, its sample types, plain or differential.

Both renderers (static SVG, interactive HTML) draw a `Graph`. A plain graph
has one value column per sample type. A differential graph compares two
profiles by share (each normalised by its own total, so a longer or busier
run does not paint everything red): it has the base's columns, then the new
profile's, for the sample types both profiles have. A frame's width there is
the mean of its two shares, so a function that vanished still shows, in
blue, and one that appeared shows in red.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import model
from agent.tools.flamegraph.diff import matching_indices
from agent.tools.flamegraph.tree import Tree, build_tree


@dataclass
class Graph:
    tree: Tree
    sample_types: list[model.ValueType]
    default_type: int
    title: str
    diff: bool = False

    def totals(self, t: int) -> tuple[int, int]:
        """(base, new) root totals of sample type t; (0, total) when plain."""
        if not self.diff:
            return 0, self.tree.columns[t][0]
        return self.tree.columns[t][0], self.tree.columns[len(self.sample_types) + t][0]

    def shares(self, t: int, i: int) -> tuple[float, float]:
        """Node i's share of each profile's total for sample type t."""
        k = len(self.sample_types)
        if not self.diff:
            total = self.tree.columns[t][0]
            return 0.0, (self.tree.columns[t][i] / total if total else 0.0)
        base, new = self.totals(t)
        before = self.tree.columns[t][i] / base if base else 0.0
        after = self.tree.columns[k + t][i] / new if new else 0.0
        return before, after

    def width(self, t: int, i: int) -> float:
        """The fraction of the root's width node i takes, 0..1."""
        before, after = self.shares(t, i)
        return (before + after) / 2 if self.diff else after

    @property
    def empty(self) -> bool:
        return all(col[0] == 0 for col in self.tree.columns)


def plain_graph(profile: model.Profile, title: str, sample_index: str | None = None) -> Graph:
    """Every sample type of one profile; `sample_index` picks the one shown first."""
    default = profile.sample_index(sample_index)
    tree = build_tree([(profile, range(len(profile.sample_types)))])
    return Graph(tree, list(profile.sample_types), default, title)


def diff_graph(
    base: model.Profile, new: model.Profile, title: str, sample_index: str | None = None
) -> Graph:
    """The sample types both profiles have (by name), base columns first."""
    _, shown = matching_indices(base, new, sample_index)
    base_index = {st.type: i for i, st in enumerate(base.sample_types)}
    common = [i for i, st in enumerate(new.sample_types) if st.type in base_index]
    base_cols = [base_index[new.sample_types[i].type] for i in common]
    tree = build_tree([(base, base_cols), (new, common)])
    types = [new.sample_types[i] for i in common]
    return Graph(tree, types, common.index(shown), title, diff=True)
