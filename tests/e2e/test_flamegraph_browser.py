"""The HTML flame graph in a real browser: Debian's headless Chromium over CDP.

Pages are loaded from file:// URLs with the network off, and driven as a
user would: real mouse events on the frames, text typed into the search
box, the sample type picked from its list. Every test ends with no console
error and no uncaught exception.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import Frame, Location, Profile, Sample, ValueType
from agent.tools.flamegraph import diff_graph, plain_graph, render
from bench.flamegraph import synthetic_profile
from tests.browser import CHROMIUM, Browser, png_pixels
from tests.split_profiles import split_profile

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs chromium (setup-host.sh --test)"),
]

FRAMES = """Array.from(document.querySelectorAll('#fg-chart .f')).map(e => {
  const r = e.getBoundingClientRect();
  return {name: e.textContent, x: r.x, y: r.y, w: r.width, h: r.height,
          cls: e.className, bg: e.style.background};
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b


def open_page(browser: Browser, path: Path, graph: Any) -> None:
    path.write_text(render(graph, "html"))
    browser.events.clear()
    browser.load(path.as_uri())
    assert browser.errors() == []


def drawn(browser: Browser) -> dict[str, dict[str, Any]]:
    """Frames on screen by name (the first of each name, in document order)."""
    out: dict[str, dict[str, Any]] = {}
    for frame in browser.evaluate(FRAMES):
        out.setdefault(frame["name"], frame)
    return out


def centre(frame: dict[str, Any]) -> tuple[float, float]:
    return frame["x"] + frame["w"] / 2, frame["y"] + frame["h"] / 2


def test_zoom_search_tooltip_sample_type_and_orientation(browser: Browser, tmp_path: Path) -> None:
    open_page(browser, tmp_path / "fg.html", plain_graph(split_profile(75, 25), "Split"))
    frames = drawn(browser)
    full = frames["all"]["w"]
    assert frames["hot_a"]["w"] / full == pytest.approx(0.75, abs=0.01)
    assert frames["hot_b"]["w"] / full == pytest.approx(0.25, abs=0.01)
    assert browser.evaluate("document.title") == "Split"

    # Hover: full name, file:line, total and self with percentages.
    browser.hover(*centre(frames["hot_a"]))
    tip = browser.evaluate("document.getElementById('fg-tooltip').innerText")
    assert "hot_a" in tip and "hotsplit.c:19" in tip
    assert "Total\t75 samples (75.00%)" in tip and "Self\t75 samples (75.00%)" in tip

    # Click the hot function: it fills the width, its sibling is gone, the title says so.
    browser.click(*centre(frames["work_a"]))
    zoomed = drawn(browser)
    assert zoomed["work_a"]["w"] == pytest.approx(full, abs=1)
    assert "hot_b" not in zoomed and "anc" in zoomed["main"]["cls"]
    assert browser.evaluate("document.title") == "work_a \u2014 Split"
    # Back (the browser's) zooms out again.
    browser.evaluate("history.back(); new Promise(r => setTimeout(r, 200))")
    assert "hot_b" in drawn(browser) and browser.evaluate("document.title") == "Split"

    # Search: the highlight count and the matched share.
    browser.evaluate("document.getElementById('fg-search').focus()")
    browser.type_text("hot_")
    assert browser.evaluate("document.getElementById('fg-chart').dataset.highlighted") == "2"
    assert browser.evaluate("document.querySelectorAll('.f.match').length") == 2
    browser.type_text("b")
    matched = browser.evaluate("document.getElementById('fg-matched').textContent")
    assert matched == "Matched: 25.00% (1 frames highlighted)"

    # Another sample type: the split weighs the other way.
    browser.evaluate(
        "const s = document.getElementById('fg-type'); s.value = '1';"
        "s.dispatchEvent(new Event('change'))"
    )
    frames = drawn(browser)
    assert frames["hot_b"]["w"] / frames["all"]["w"] == pytest.approx(0.75, abs=0.01)
    assert "match" in frames["hot_b"]["cls"], "the search survives a type switch"

    # Flame orientation: the root goes to the bottom.
    browser.click(*centre(browser.evaluate(FRAMES.replace("'#fg-chart .f'", "'#fg-orient'"))[0]))
    frames = drawn(browser)
    assert frames["all"]["y"] > frames["hot_b"]["y"]
    assert browser.errors() == []


def test_screenshot_is_not_blank(browser: Browser, tmp_path: Path) -> None:
    open_page(browser, tmp_path / "fg.html", plain_graph(split_profile(75, 25), "Split"))
    png = browser.send(
        "Page.captureScreenshot",
        format="png",
        clip={"x": 0, "y": 0, "width": 640, "height": 400, "scale": 1},
    )["data"]
    import base64

    width, height, rows = png_pixels(base64.b64decode(png))
    assert (width, height) == (640, 400)
    bpp = len(rows[0]) // width
    pixels = [row[i : i + 3] for row in rows for i in range(0, len(row), bpp)]
    background = max(set(pixels), key=pixels.count)
    share_drawn = sum(p != background for p in pixels) / len(pixels)
    assert len(set(pixels)) > 20 and share_drawn > 0.05
    # The hot frame's colour (a native red) is on the screen.
    assert any(p[0] > 190 and p[1] < 140 for p in pixels)


def test_diff_page_colours_and_tooltip(browser: Browser, tmp_path: Path) -> None:
    graph = diff_graph(split_profile(75, 25), split_profile(50, 50), "Diff")
    open_page(browser, tmp_path / "diff.html", graph)
    frames = drawn(browser)
    assert frames["hot_b"]["bg"] == "rgb(255, 20, 20)"  # grew
    assert frames["hot_a"]["bg"] == "rgb(20, 20, 255)"  # shrank
    browser.hover(*centre(frames["hot_b"]))
    tip = browser.evaluate("document.getElementById('fg-tooltip').innerText")
    assert "Before\t25.00%" in tip and "After\t50.00%" in tip and "+25.00 points" in tip
    assert browser.errors() == []


# Each drawn frame's name, whether its text is seen, and for a label that is
# cut, whether its text box holds three characters and the ellipsis.
LABELS = """Array.from(document.querySelectorAll('#fg-chart .f:not(.merged)')).map(e => {
  const cs = getComputedStyle(e), ctx = document.createElement('canvas').getContext('2d');
  ctx.font = cs.fontSize + ' ' + cs.fontFamily;
  // clientWidth is rounded: a pixel of slack
  const box = e.clientWidth + 1 - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const name = e.textContent;
  return {name, seen: cs.color !== 'rgba(0, 0, 0, 0)', cut: e.scrollWidth > e.clientWidth,
          room: box >= ctx.measureText(name.slice(0, 3) + '\u2026').width,
          overflow: cs.textOverflow};
})"""


def test_narrow_frames_show_no_fragment_of_a_name(browser: Browser, tmp_path: Path) -> None:
    """GIVEN frames from 1 to 45 px wide with long names, THEN a label is its
    whole name or at least three characters and an ellipsis; a frame with
    less room is blank to the eye, yet keeps its name for find and readers."""
    main = Location(1, None, (Frame("main"),))
    widths = range(2, 100, 3)
    samples = [Sample((main,), (1000,))]
    samples += [
        Sample((Location(10 + w, None, (Frame(f"narrow_function_{w}"),)), main), (w,))
        for w in widths
    ]
    profile = Profile(sample_types=(ValueType("samples", "count"),), samples=samples)
    open_page(browser, tmp_path / "narrow.html", plain_graph(profile, "Narrow"))
    frames = {f["name"]: f for f in browser.evaluate(LABELS)}
    narrow = [frames[f"narrow_function_{w}"] for w in widths if f"narrow_function_{w}" in frames]
    assert len(narrow) >= 20
    fragments = [f["name"] for f in frames.values() if f["seen"] and f["cut"] and not f["room"]]
    assert fragments == []
    assert any(not f["seen"] for f in narrow) and any(f["seen"] and f["cut"] for f in narrow)
    assert {f["overflow"] for f in narrow} == {"ellipsis"}
    assert browser.errors() == []


def test_large_profile_draws_a_bounded_number_of_frames(browser: Browser, tmp_path: Path) -> None:
    """20,000 distinct stacks (the benchmark uses 100,000): frames narrower
    than a pixel are merged, so what is drawn is bounded by the chart's
    pixels, not by the profile's hundreds of thousands of nodes."""
    graph = plain_graph(synthetic_profile(20_000), "Big")
    open_page(browser, tmp_path / "big.html", graph)
    frames = browser.evaluate(FRAMES)
    width = browser.evaluate("document.getElementById('fg-chart').clientWidth")
    rows = {f["y"] for f in frames}
    assert len(graph.tree) > 100_000 and len(frames) <= width * len(rows)
    assert all(f["w"] >= 1 - 1e-6 for f in frames)
    assert any("merged" in f["cls"] for f in frames)
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert browser.evaluate(overflow) == 0, "the chart must fit the window's width"
    widest = max(
        (f for f in frames if f["y"] > frames[0]["y"] and "merged" not in f["cls"]),
        key=lambda f: f["w"],
    )
    browser.click(*centre(widest))
    assert browser.evaluate("document.title") == f"{widest['name']} \u2014 Big"
    assert browser.errors() == []


def test_empty_profile_page_says_so(browser: Browser, tmp_path: Path) -> None:
    empty = split_profile(1, 1)
    empty.samples.clear()
    open_page(browser, tmp_path / "empty.html", plain_graph(empty, "Nothing"))
    text = browser.evaluate("document.body.innerText")
    assert "This profile has no samples" in text
    assert browser.evaluate("document.querySelectorAll('.f').length") == 0
