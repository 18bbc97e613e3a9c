"""Every output with Python frames: pprof (and back, and `go tool pprof`),
OTLP's frame type, folded stacks, `top`, and the flame graphs' colours.

The profile comes through the real resolver and builder from a stack with
two Python activations (the fakes of test_python_splice.py):

    main -> _PyEval(b.py:b) -> PyObject_Call -> _PyEval(a.py:a) -> read
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from agent.exporters import folded, otlp, pprof, pprof_pb
from agent.model import CPYTHON, Frame, Profile, RawKey, RawSample, RawStack
from agent.pipeline.builder import build_profile, cpu_spec
from agent.pipeline.resolve import StackResolver
from agent.tools.flamegraph import plain_graph, render
from agent.tools.flamegraph.html import payload
from agent.tools.flamegraph.style import frame_colour
from agent.tools.report import format_top
from tests.unit.test_flamegraph import frames as svg_frames
from tests.unit.test_pipeline import FakeSymbolizer
from tests.unit.test_python_splice import NATIVE, PID, FakeNames, py, ret


def python_profile() -> Profile:
    user = (
        *ret(0x6000, 0x2010, 0x6100, 0x2020, 0x3000),
        py(0xA0, 3, entry=True),
        py(0xB0, 5, entry=True),
    )
    raw = [RawSample(RawKey(PID, PID, "python3", RawStack(user)), (3,))]
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}), FakeNames())
    return build_profile(
        raw, cpu_spec(99), resolver, lambda k: "python3.11", time_nanos=1, duration_nanos=2
    )


def test_pprof_round_trip_keeps_python_frames_and_their_kind() -> None:
    """GIVEN Python frames WHEN encoded and decoded THEN names, files,
    lines and first lines are kept, and the kind comes back as cpython
    (from the [python3.11] pseudo-mapping; pprof has no field for it)."""
    want = python_profile()
    got = pprof.decode(pprof.encode(want))
    (sample,) = got.samples
    assert [loc.kind for loc in sample.locations] == [
        "native",
        CPYTHON,
        "native",
        CPYTHON,
        "native",
    ]
    assert sample.locations == want.samples[0].locations
    assert sample.locations[1].frames == (Frame("a", "/app/a.py", 6, 1),)


def test_pprof_lists_the_binary_before_the_python_pseudo_mapping() -> None:
    message = pprof_pb.Profile()
    message.ParseFromString(gzip.decompress(pprof.encode(python_profile())))
    files = [message.string_table[m.filename] for m in message.mapping]
    assert files == ["/usr/bin/prog", "[python3.11]"]
    python = message.mapping[1]
    assert python.has_functions and python.has_filenames and python.has_line_numbers


@pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed")
def test_go_tool_pprof_shows_python_frames_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "py.pb.gz"
    path.write_bytes(pprof.encode(python_profile()))
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PPROF_BINARY_PATH": str(tmp_path)}
    run = subprocess.run(
        ["go", "tool", "pprof", "-traces", "-lines", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert "a /app/a.py:6" in run.stdout and "b /app/b.py:10" in run.stdout
    assert "warning" not in run.stderr.lower()


def test_otlp_marks_python_frames_cpython() -> None:
    data = pb.ProfilesData()
    data.ParseFromString(otlp.encode(python_profile(), "host"))
    d = data.dictionary
    s = d.string_table
    kinds = {}
    for loc in d.location_table[1:]:
        (i,) = loc.attribute_indices
        attr = d.attribute_table[i]
        assert s[attr.key_strindex] == "profile.frame.type"
        name = s[d.function_table[loc.lines[0].function_index].name_strindex]
        kinds[name] = attr.value.string_value
    assert kinds == {
        "read": "native",
        "a": "cpython",
        "PyObject_Call": "native",
        "b": "cpython",
        "main": "native",
    }


def test_folded_and_top_name_python_frames_by_qualname() -> None:
    profile = python_profile()
    assert folded.encode(profile, "samples") == "python3.11;main;b;PyObject_Call;a;read 3\n"
    top = format_top(profile, by_cum=True)
    assert " a\n" in top and " b\n" in top


def test_flame_graphs_paint_python_frames_as_interpreted() -> None:
    """GIVEN Python frames WHEN drawn (from the pprof file, as `bpfprof
    flamegraph` reads it) THEN the HTML payload maps their kind to the
    interpreter family viewer.js colours, and the SVG fills them with the
    interpreter palette."""
    profile = pprof.decode(pprof.encode(python_profile()))
    graph = plain_graph(profile, "py")
    data = payload(graph)
    family = dict(zip(data["kinds"], data["families"], strict=True))
    assert family[CPYTHON] == "interpreter" and family["native"] == "native"
    kind_of = {
        data["names"][name]: data["kinds"][kind >> 1]
        for name, kind in zip(data["funcs"]["name"], data["funcs"]["kind"], strict=True)
    }
    assert kind_of["a"] == kind_of["b"] == CPYTHON
    drawn = svg_frames(render(graph, "svg"))
    assert drawn["a"][1] == frame_colour("python", "a") != frame_colour("native", "a")
    assert drawn["read"][1] == frame_colour("native", "read")
