"""Flame graph speed on a large profile: generation, and the page in Chromium.

    .venv/bin/python -m bench.flamegraph [--stacks 100000] [--repeat 3]

A synthetic CPU profile with N distinct stacks is made from a fixed seed:
a call graph of a few thousand functions, stacks as random walks from
`main` whose callees are picked with a skewed (Zipf-like) choice, 8 to 40
frames deep, one in five ending in kernel frames, and a skewed sample count
per stack. That is the shape of a real busy service: shared roots, a long
tail of rare leaves. Measured:

- `bpfprof flamegraph` in-process: decode, tree, HTML (CPU time of this process);
- in headless Chromium: page load to the load event, the viewer's JSON
  parse and first render, a zoom click, a search and a sample type switch,
  each until the next painted frame (two requestAnimationFrame callbacks).

Prints one JSON object; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import model
from agent.exporters.pprof import decode, encode
from agent.tools.flamegraph import plain_graph, render

PERIOD = 10_101_010
KERNEL = model.Mapping(0xFFFFFFFF81000000, 0xFFFFFFFF83000000, 0, model.KERNEL_MAPPING_NAME)


def synthetic_profile(stacks: int, seed: int = 1) -> model.Profile:
    """A CPU profile with exactly `stacks` distinct stacks (leaf first)."""
    rng = random.Random(seed)
    app = model.Mapping(0x400000, 0x4000000, 0, "/usr/bin/service", "5e41")
    functions = 4000
    user = [
        model.Location(
            0x400000 + 0x100 * (i + 1),
            app,
            (model.Frame(f"ns{i % 37}::Component{i % 211}::method_{i}", f"src/mod{i % 97}.cc", i),),
        )
        for i in range(functions)
    ]
    kernel = [
        model.Location(
            KERNEL.start + 0x40 * (i + 1), KERNEL, (model.Frame(f"kfunc_{i}"),), "kernel"
        )
        for i in range(300)
    ]
    callees = [[rng.randrange(1, functions) for _ in range(rng.randint(2, 12))] for _ in user]
    seen: set[tuple[int, ...]] = set()
    samples = []
    while len(seen) < stacks:
        path = [0]
        for _ in range(rng.randint(8, 40)):
            options = callees[path[-1]]
            path.append(options[min(int(rng.paretovariate(1.2)) - 1, len(options) - 1)])
        if rng.random() < 0.2:
            path += [functions + rng.randrange(300) for _ in range(rng.randint(1, 6))]
        key = tuple(path)
        if key in seen:
            continue
        seen.add(key)
        locs = tuple((user + kernel)[i] for i in reversed(path))
        count = min(int(rng.paretovariate(1.1)), 5000)
        samples.append(model.Sample(locs, (count, count * PERIOD)))
    return model.Profile(
        (model.ValueType("samples", "count"), model.ValueType("cpu", "nanoseconds")),
        samples,
        model.ValueType("cpu", "nanoseconds"),
        PERIOD,
        default_sample_type="cpu",
    )


def generate(data: bytes, out: Path) -> dict[str, float]:
    """CPU seconds of each stage of `bpfprof flamegraph` on an encoded profile."""
    t0 = time.process_time()
    profile = decode(data)
    t1 = time.process_time()
    graph = plain_graph(profile, "benchmark")
    t2 = time.process_time()
    out.write_text(render(graph, "html"))
    t3 = time.process_time()
    return {
        "decode_s": t1 - t0,
        "tree_s": t2 - t1,
        "html_s": t3 - t2,
        "total_s": t3 - t0,
        "nodes": len(graph.tree),
        "html_bytes": out.stat().st_size,
    }


NEXT_PAINT = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def timed(browser: Any, action: str) -> float:
    """Milliseconds from an action (JS) until the next painted frame."""
    return float(
        browser.evaluate(
            f"(async () => {{ const t0 = performance.now(); {{ {action}; }} await {NEXT_PAINT}; "
            "return performance.now() - t0; })()"
        )
    )


def in_browser(page: Path) -> dict[str, Any]:
    from tests.browser import Browser

    with Browser() as b:
        t = time.monotonic()
        b.load(page.as_uri())
        load_ms = (time.monotonic() - t) * 1000
        timings = b.evaluate("window.bpfprofTimings")
        biggest = (
            "Array.from(document.querySelectorAll('.f:not(.anc):not(.merged)'))"
            ".filter(e => e.style.top !== '0px').sort((a, b) => b.offsetWidth - a.offsetWidth)"
        )
        zoom = timed(b, f"{biggest}[0].click()")
        zoom_js, zoom_frames = b.evaluate("[bpfprofTimings.lastRenderMs, bpfprofTimings.frames]")
        out = timed(b, "history.back()")
        search = timed(
            b,
            "const s = document.getElementById('fg-search'); s.value = 'Component1';"
            "s.dispatchEvent(new Event('input'))",
        )
        switch = timed(
            b,
            "const t = document.getElementById('fg-type'); t.value = '0';"
            "t.dispatchEvent(new Event('change'))",
        )
        errors = b.errors()
    return {
        "load_ms": load_ms,
        "parse_ms": timings["parseMs"],
        "first_render_ms": timings["firstRenderMs"],
        "frames_drawn": timings["frames"],
        "zoom_ms": zoom,
        "zoom_render_js_ms": zoom_js,
        "zoom_frames_drawn": zoom_frames,
        "zoom_out_ms": out,
        "search_ms": search,
        "switch_type_ms": switch,
        "console_errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    data = encode(synthetic_profile(args.stacks))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "flamegraph.html"
        for _ in range(args.repeat):
            runs.append(generate(data, page) | in_browser(page))
    medians = {
        key: statistics.median(run[key] for run in runs)
        for key, value in runs[0].items()
        if isinstance(value, (int, float))
    }
    result = {"stacks": args.stacks, "pprof_bytes": len(data), "runs": len(runs), "median": medians}
    result["console_errors"] = sorted({e for run in runs for e in run["console_errors"]})
    json.dump(result, sys.stdout, indent=2)
    print()
    return 1 if result["console_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
