"""Stacks merged into one call tree, root first, laid out for drawing.

A flame graph is a call tree whose nodes are functions under their caller:
two samples share a node for as long as their stacks, read from the root,
agree. A function here is a name, a frame kind and whether the frame was
inlined; not its source file, which differs between two builds of the same
code (another build directory), and a diff must match them up. The file
shown is the first one seen.
Inlined frames are nodes of their own (an inlined call is still a call to
whoever reads the graph), marked so the tooltip can say so.

The tree is flattened in pre-order with each node's subtree end (`end[i]`):
a node's children are walked as `j = i + 1; while j < end[i]: ...; j =
end[j]`, with no per-node objects, which keeps a profile of 100,000 stacks
small in Python and on the page. Children are ordered by name, as
flamegraph.pl does, so the picture stays put when the sample type changes.
Per node there is only its function id and its values: the function table
holds names and files, and a node's line is its function's first-seen line
unless `lines` says otherwise (a function sampled at several lines under
one caller has no single line: MIXED_LINES).

Values are kept in *columns*, one list per (profile, sample type): the total
of each node's subtree. A plain graph has one column per sample type; a
differential one has the base's and the new profile's columns side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from agent import model

ROOT_NAME = "all"
MIXED_LINES = -1


@dataclass
class Tree:
    """A merged call tree, flattened in pre-order (node 0 is the root)."""

    names: list[str] = field(default_factory=list)  # interned strings
    files: list[str] = field(default_factory=lambda: [""])
    kinds: list[str] = field(default_factory=list)
    func_name: list[int] = field(default_factory=list)  # function table
    func_kind: list[int] = field(default_factory=list)
    func_file: list[int] = field(default_factory=list)
    func_line: list[int] = field(default_factory=list)
    func_inlined: list[bool] = field(default_factory=list)
    func: list[int] = field(default_factory=list)  # per node: its function
    end: list[int] = field(default_factory=list)  # node i's subtree is [i, end[i])
    lines: dict[int, int] = field(default_factory=dict)  # node -> line, where not func_line
    columns: list[list[int]] = field(default_factory=list)  # columns[c][node]: subtree total

    def __len__(self) -> int:
        return len(self.func)

    def children(self, i: int) -> Iterator[int]:
        j = i + 1
        while j < self.end[i]:
            yield j
            j = self.end[j]

    def label(self, i: int) -> str:
        return self.names[self.func_name[self.func[i]]]

    def kind(self, i: int) -> str:
        return self.kinds[self.func_kind[self.func[i]]]

    def inlined(self, i: int) -> bool:
        return self.func_inlined[self.func[i]]

    def file(self, i: int) -> str:
        return self.files[self.func_file[self.func[i]]]

    def line(self, i: int) -> int:
        return self.lines.get(i, self.func_line[self.func[i]])

    def find(self, *path: str) -> int:
        """The node at a root-first path of names below the root; -1 if none."""
        node = 0
        for part in path:
            node = next((j for j in self.children(node) if self.label(j) == part), -1)
            if node < 0:
                return -1
        return node


# A frame as the tree keys it (name, kind, inlined); then its file and line.
_Func = tuple[str, str, bool]
_Step = tuple[_Func, str, int]


def build_tree(series: Sequence[tuple[model.Profile, Sequence[int]]]) -> Tree:
    """Merge every sample of every profile in `series` into one tree.

    Each entry is a profile and the sample type indices it contributes, one
    column each, in order.
    """
    builder = _Builder(sum(len(indices) for _, indices in series))
    first = 0
    for profile, indices in series:
        for sample in profile.samples:
            builder.add(
                sample.locations, [(first + c, sample.values[i]) for c, i in enumerate(indices)]
            )
        first += len(indices)
    return builder.flatten()


def location_steps(loc: model.Location) -> list[_Step]:
    """Outermost frame first: a location's frames are stored innermost
    first, and all but the outermost were inlined into the next one out."""
    if not loc.frames:
        return [((loc.display_name(), loc.kind, False), "", 0)]
    last = len(loc.frames) - 1
    return [
        ((f.function or loc.display_name(), loc.kind, i != last), f.file, f.line)
        for i, f in reversed(list(enumerate(loc.frames)))
    ]


class _Builder:
    """The tree while it grows: one dict of edges, values charged to leaves.

    Only a stack's leaf node is charged (its self value); subtree totals are
    summed once when flattening, so a frame costs one dict lookup.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.funcs: dict[_Func, int] = {(ROOT_NAME, "root", False): 0}
        self.func_file = [""]
        self.func_line = [0]
        self.edges: dict[tuple[int, int], int] = {}
        self.node_func = [0]
        self.node_line = [0]
        self.node_parent = [0]
        self.charged: dict[int, list[int]] = {}  # node -> its self values
        self.steps: dict[int, list[tuple[int, int]]] = {}
        self.keep: list[model.Location] = []  # keeps the id()s in self.steps unique

    def add(self, stack: tuple[model.Location, ...], values: list[tuple[int, int]]) -> None:
        node = 0
        edges, node_line = self.edges, self.node_line
        for loc in reversed(stack):
            steps = self.steps.get(id(loc))
            if steps is None:
                steps = self.steps[id(loc)] = self._steps(loc)
            for fid, line in steps:
                child = edges.get((node, fid))
                if child is None:
                    child = edges[node, fid] = len(self.node_func)
                    self.node_func.append(fid)
                    self.node_parent.append(node)
                    node_line.append(line)
                elif node_line[child] != line:
                    node_line[child] = MIXED_LINES
                node = child
        row = self.charged.get(node)
        if row is None:
            row = self.charged[node] = [0] * self.width
        for c, v in values:
            row[c] += v

    def _steps(self, loc: model.Location) -> list[tuple[int, int]]:
        self.keep.append(loc)
        out = []
        for func, file, line in location_steps(loc):
            fid = self.funcs.get(func)
            if fid is None:
                fid = self.funcs[func] = len(self.funcs)
                self.func_file.append(file)
                self.func_line.append(line)
            elif file and not self.func_file[fid]:
                self.func_file[fid] = file
            out.append((fid, line))
        return out

    def flatten(self) -> Tree:
        tree = Tree()
        old_ids = self._preorder(self._function_table(tree))
        n = len(old_ids)
        new_id = [0] * n
        for new, old in enumerate(old_ids):
            new_id[old] = new
        tree.func = [self.node_func[old] for old in old_ids]
        tree.lines = {
            new: self.node_line[old]
            for new, old in enumerate(old_ids)
            if self.node_line[old] != self.func_line[self.node_func[old]]
        }
        up = [new_id[self.node_parent[old]] for old in old_ids]
        tree.end = list(range(1, n + 1))
        end = tree.end
        for new in range(n - 1, 0, -1):  # children before their parents
            if end[new] > end[up[new]]:
                end[up[new]] = end[new]
        for c in range(self.width):
            column = [0] * n
            for old, row in self.charged.items():
                column[new_id[old]] = row[c]
            for new in range(n - 1, 0, -1):
                column[up[new]] += column[new]
            tree.columns.append(column)
        return tree

    def _preorder(self, rank: list[int]) -> list[int]:
        """Node ids in drawing order: depth first, children by name."""
        parent, func, nf = self.node_parent, self.node_func, len(rank)
        n = len(func)
        order = sorted(range(1, n), key=lambda c: parent[c] * nf + rank[func[c]])
        start, count = [0] * n, [0] * n  # node p's children: order[start[p]:][:count[p]]
        for k, child in enumerate(order):
            p = parent[child]
            if not count[p]:
                start[p] = k
            count[p] += 1
        out: list[int] = []
        stack = [0]  # iterative: stacks can be thousands of frames deep
        while stack:
            node = stack.pop()
            out.append(node)
            if count[node]:
                stack.extend(reversed(order[start[node] : start[node] + count[node]]))
        return out

    def _function_table(self, tree: Tree) -> list[int]:
        """Fill the tree's function and string tables; return each function's
        rank in name order, the order children are drawn in."""
        strings: dict[str, dict[str, int]] = {"names": {}, "files": {"": 0}, "kinds": {}}

        def intern(table: str, text: str) -> int:
            ids = strings[table]
            if text not in ids:
                ids[text] = len(ids)
                getattr(tree, table).append(text)
            return ids[text]

        for (name, kind, inlined), fid in self.funcs.items():
            tree.func_name.append(intern("names", name))
            tree.func_kind.append(intern("kinds", kind))
            tree.func_inlined.append(inlined)
            tree.func_file.append(intern("files", self.func_file[fid]))
            tree.func_line.append(self.func_line[fid])
        order = sorted(self.funcs.items())
        rank = [0] * len(order)
        for r, (_, fid) in enumerate(order):
            rank[fid] = r
        return rank
