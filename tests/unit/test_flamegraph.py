"""Flame graphs: the merged tree, diff shares, the SVG and the page's data."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from agent.errors import InvalidProfile, UsageError
from agent.model import Frame, Location, Profile, Sample, ValueType
from agent.tools.flamegraph import diff_graph, output_format, plain_graph, render
from agent.tools.flamegraph.diff import format_diff, function_changes, matching_indices
from agent.tools.flamegraph.html import payload, render_html
from agent.tools.flamegraph.svg import PAD, WIDTH
from agent.tools.flamegraph.tree import MIXED_LINES, Tree, build_tree
from tests.fake_profiles import PERIOD, cpu_profile
from tests.split_profiles import BINARY, split_profile

SVG = "{http://www.w3.org/2000/svg}"


def self_value(tree: Tree, column: int, i: int) -> int:
    """A node's own value: its total less its children's."""
    values = tree.columns[column]
    return values[i] - sum(values[j] for j in tree.children(i))


# ---- the tree ---------------------------------------------------------------


def test_tree_merges_stacks_root_first_with_totals_per_sample_type() -> None:
    tree = build_tree([(cpu_profile(), (0, 1))])
    main = tree.find("main")
    assert tree.label(0) == "all" and tree.columns[0][0] == 6
    assert [tree.label(c) for c in tree.children(main)] == ["app+0x4345", "work"]
    work = tree.find("main", "work")
    inner = tree.find("main", "work", "inner")
    kernel = tree.find("main", "work", "inner", "[kernel.kallsyms]+0x1000")
    assert [tree.columns[0][n] for n in (main, work, inner, kernel)] == [6, 5, 5, 3]
    assert tree.columns[1][work] == 5 * PERIOD
    assert (self_value(tree, 0, inner), self_value(tree, 0, work)) == (2, 0)
    # The inlined callee is a frame of its own, marked; kinds and lines are kept.
    assert tree.inlined(inner) and not tree.inlined(work)
    assert (tree.kind(kernel), tree.kind(work)) == ("kernel", "native")
    assert (tree.file(inner), tree.line(inner), tree.line(work)) == ("app.c", 30, 20)
    assert tree.find("main", "nothing") == -1


def test_tree_subtree_ends_describe_a_preorder_walk() -> None:
    tree = build_tree([(cpu_profile(), (0,))])
    assert tree.end[0] == len(tree)
    for i in range(len(tree)):
        kids = list(tree.children(i))
        assert sum(tree.columns[0][k] for k in kids) <= tree.columns[0][i]
        assert all(i < k < tree.end[i] for k in kids)


def test_a_function_sampled_at_several_lines_under_one_caller_has_none() -> None:
    def loc(address: int, line: int) -> Location:
        return Location(address, BINARY, (Frame("f", "f.c", line),))

    main = Location(0x401000, BINARY, (Frame("main", "f.c", 3),))
    profile = Profile(
        (ValueType("samples", "count"),),
        [
            Sample((loc(0x402000, 10), main), (1,)),
            Sample((loc(0x402010, 11), main), (1,)),
        ],
    )
    tree = build_tree([(profile, (0,))])
    f = tree.find("main", "f")
    assert tree.line(f) == MIXED_LINES and tree.columns[0][f] == 2


def test_two_profiles_become_side_by_side_columns() -> None:
    tree = build_tree([(split_profile(75, 25), (0,)), (split_profile(50, 50), (0,))])
    hot_a = tree.find("main", "run", "work_a", "hot_a")
    assert [col[hot_a] for col in tree.columns] == [75, 50]


def test_an_empty_stack_is_charged_to_the_root() -> None:
    profile = Profile((ValueType("samples", "count"),), [Sample((), (4,))])
    tree = build_tree([(profile, (0,))])
    assert len(tree) == 1 and tree.columns[0][0] == 4


# ---- diff -------------------------------------------------------------------


def test_diff_normalises_by_total_and_sorts_by_the_size_of_the_change() -> None:
    # The new profile is twice the size: only the shares count.
    changes = function_changes(split_profile(75, 25), split_profile(100, 100))
    by_name = {c.name: c for c in changes}
    assert (by_name["hot_b"].before, by_name["hot_b"].after) == (0.25, 0.5)
    assert by_name["hot_a"].delta == pytest.approx(-0.25)
    assert by_name["main"].delta == 0
    assert [c.name for c in changes[:2]] == ["hot_a", "hot_b"]


def test_diff_by_cumulative_share() -> None:
    changes = {
        c.name: c for c in function_changes(split_profile(3, 1), split_profile(1, 1), by_cum=True)
    }
    assert changes["work_b"].delta == pytest.approx(0.25)
    assert changes["run"].delta == 0


def test_diff_text_golden() -> None:
    text = format_diff(split_profile(75, 25), split_profile(50, 50), count=5)
    assert text == (
        "Type: samples (flat share of each profile's total)\n"
        "Total: 100 base, 100 new\n"
        "Showing top 2 of 2 functions whose share changed\n"
        "  before    after    change  name\n"
        "  75.00%   50.00%   -25.00%  hot_a\n"
        "  25.00%   50.00%   +25.00%  hot_b\n"
    )


def test_diff_of_profiles_without_samples_is_all_zero() -> None:
    empty = replace(split_profile(1, 1), samples=[])
    assert all(c.before == 0 for c in function_changes(empty, split_profile(1, 3)))
    assert "Showing top 0 of 0" in format_diff(empty, empty)


def test_diff_needs_the_sample_type_in_both_profiles() -> None:
    assert matching_indices(split_profile(1, 1), cpu_profile(), "samples") == (0, 0)
    with pytest.raises(InvalidProfile, match="base profile has no sample type 'cpu'"):
        matching_indices(split_profile(1, 1), cpu_profile(), None)


# ---- graphs and the SVG --------------------------------------------------------


def frames(svg: str) -> dict[str, tuple[float, str]]:
    """Width and fill of the widest frame of each name (the title up to " (")."""
    root = ET.fromstring(svg)
    out: dict[str, tuple[float, str]] = {}
    for g in root.iter(f"{SVG}g"):
        title, rect = g.find(f"{SVG}title"), g.find(f"{SVG}rect")
        if title is not None and rect is not None and title.text:
            name, width = title.text.split(" (")[0], float(rect.attrib["width"])
            if width > out.get(name, (-1.0, ""))[0]:
                out[name] = (width, rect.attrib["fill"])
    return out


def test_svg_parses_and_draws_the_hot_function_at_its_share() -> None:
    svg = render(plain_graph(split_profile(75, 25), "split"), "svg")
    drawn = frames(svg)
    full = WIDTH - 2 * PAD
    assert drawn["all"][0] == pytest.approx(full, abs=0.1)
    assert drawn["hot_a"][0] / full == pytest.approx(0.75, abs=0.001)
    assert drawn["hot_b"][0] / full == pytest.approx(0.25, abs=0.001)
    assert "hotsplit.c:19" in svg and "split</text>" in svg


def test_svg_of_another_sample_type() -> None:
    drawn = frames(render(plain_graph(split_profile(75, 25), "s", "space"), "svg"))
    assert drawn["hot_b"][0] / (WIDTH - 2 * PAD) == pytest.approx(0.75, abs=0.001)


def labels(svg: str) -> dict[str, str]:
    """The text drawn in each frame, by the function its title names."""
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        title, text = g.find(f"{SVG}title"), g.find(f"{SVG}text")
        if title is not None and title.text:
            out[title.text.split(" (")[0]] = text.text or "" if text is not None else ""
    return out


def test_svg_leaves_narrow_frames_blank_rather_than_show_a_fragment() -> None:
    """GIVEN frames 30, 37 and 45 px wide with long names and a 12 px one
    named `f`, THEN no label is 1-2 characters of a name: the first two are
    blank, the third keeps three ("lon.."), and `f` has no room even for itself."""
    main = Location(1, None, (Frame("main"),))
    px = {"wide_function": 1180 - 30 - 37 - 45 - 12, "long_a": 30, "long_b": 37}
    px |= {"long_c": 45, "f": 12}
    samples = [
        Sample((Location(2 + i, None, (Frame(name),)), main), (n,))
        for i, (name, n) in enumerate(px.items())
    ]
    profile = Profile(sample_types=(ValueType("samples", "count"),), samples=samples)
    drawn = labels(render(plain_graph(profile, "narrow"), "svg"))
    assert drawn == {
        "all": "all",
        "main": "main",
        "wide_function": "wide_function",
        "long_a": "",
        "long_b": "",
        "long_c": "lon..",
        "f": "",
    }


def test_svg_leaves_out_frames_narrower_than_a_tenth_of_a_pixel() -> None:
    drawn = frames(render(plain_graph(split_profile(1_000_000, 1), "s"), "svg"))
    assert "hot_a" in drawn and "hot_b" not in drawn and "work_b" not in drawn


def test_diff_svg_paints_growth_red_and_shrinkage_blue() -> None:
    graph = diff_graph(split_profile(75, 25), split_profile(50, 50), "d")
    drawn = frames(render(graph, "svg"))
    assert drawn["hot_b"][1] == "rgb(255,20,20)"
    assert drawn["hot_a"][1] == "rgb(20,20,255)"
    assert drawn["main"][1] == "rgb(255,255,255)"
    # Width is the mean of the two shares: (25% + 50%) / 2.
    assert drawn["hot_b"][0] / (WIDTH - 2 * PAD) == pytest.approx(0.375, abs=0.001)


def test_a_function_that_vanished_still_shows_in_the_diff() -> None:
    graph = diff_graph(split_profile(75, 25), split_profile(100, 0), "d")
    hot_b = graph.tree.find("main", "run", "work_b", "hot_b")
    assert graph.shares(0, hot_b) == (0.25, 0.0)
    assert graph.width(0, hot_b) == pytest.approx(0.125)


def test_diff_graph_keeps_the_sample_types_both_profiles_have() -> None:
    graph = diff_graph(cpu_profile(), split_profile(1, 1), "d")
    assert [st.type for st in graph.sample_types] == ["samples"]
    with pytest.raises(InvalidProfile):
        diff_graph(cpu_profile(), split_profile(1, 1), "d", "space")


def test_an_empty_profile_draws_a_message_not_a_broken_picture() -> None:
    empty = replace(split_profile(1, 1), samples=[])
    svg = render(plain_graph(empty, "nothing"), "svg")
    ET.fromstring(svg)
    assert "This profile has no samples" in svg
    page = render_html(plain_graph(empty, "nothing"))
    assert "This profile has no samples" in page


def test_output_format_comes_from_the_suffix() -> None:
    from pathlib import Path

    assert [output_format(Path(p)) for p in ("a.html", "b.HTM", "c.svg")] == ["html", "html", "svg"]
    with pytest.raises(UsageError, match=r"name it \.html or \.svg"):
        output_format(Path("graph.png"))


# ---- the page ---------------------------------------------------------------------


def page_data(page: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="fg-data">(.*?)</script>', page, re.S)
    assert match
    data: dict[str, object] = json.loads(match[1])
    return data


def test_page_is_self_contained_and_escapes_names_that_could_close_the_script() -> None:
    profile = split_profile(3, 1)
    weird = Location(0x401800, BINARY, (Frame("std::vector<int></script><b>", "v.h", 1),))
    profile.samples.append(Sample((weird,), (1, 1)))
    page = render_html(plain_graph(profile, "<title> & co"))
    assert page.count("</script>") == 2 and "&lt;title&gt; &amp; co" in page
    assert not re.search(r"(src|href)\s*=", page), "the page must fetch nothing"
    assert "std::vector<int></script><b>" in page_data(page)["names"]  # type: ignore[operator]


def test_page_data_is_compact_a_scaled_column_is_sent_as_its_factor() -> None:
    data = payload(plain_graph(cpu_profile(), "cpu"))
    assert data["columns"][1] is None and data["scaled"] == {1: [0, PERIOD]}
    assert data["types"] == [["samples", "count"], ["cpu", "nanoseconds"]]
    assert data["defaultType"] == 1
    funcs = data["funcs"]
    assert len(data["func"]) == len(data["size"]) == 6 and data["size"][0] == 6
    inner = data["names"].index("inner")
    assert funcs["kind"][funcs["name"].index(inner)] & 1 == 1  # inlined bit


def test_page_data_of_a_diff_has_both_profiles_columns() -> None:
    data = payload(diff_graph(split_profile(75, 25), split_profile(50, 50), "d"))
    assert data["diff"] is True and len(data["columns"]) == 4
    # The base's bytes weigh the other way round; the new profile's are a multiple.
    assert data["columns"][0][0] == 100 and data["scaled"] == {3: [2, 1024]}
