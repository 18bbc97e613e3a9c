"""The splice of Python frames into native stacks (StackResolver), with plain fakes.

The fake process: one mapping [0x1000, 0x9000); the interpreter's text is
[0x1000, 0x5000) with `_PyEval_EvalFrameDefault` at [0x2000, 0x2100); libc
lies above 0x6000. Stacks are leaf first; callers are looked up at their
address - 1. Python entries are tagged as bpf/python.h writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.model import CPYTHON, Frame, Location, RawKey, RawStack
from agent.pipeline.resolve import PYTHON_SPACE, StackResolver
from symbolizer.cpython.frames import OFFSET_MAX, OFFSET_SHIFT, PY_ENTRY, PY_FRAME
from symbolizer.cpython.names import PyName, SavedTarget
from tests.unit.test_pipeline import FakeSymbolizer

PID = 10
# split_loop: the loop may also run unnamed in the text (Debian's 3.14)
TARGET = SavedTarget(
    "/usr/bin/python3.11", (3, 11), ((0x2000, 0x2100),), ((0x1000, 0x5000),), split_loop=True
)
WHOLE = SavedTarget("/usr/bin/python3.11", (3, 11), ((0x2000, 0x2100),), ((0x1000, 0x5000),))
NATIVE = {
    0x6000: "read",
    0x2010: "_PyEval_EvalFrameDefault",
    0x2020: "_PyEval_EvalFrameDefault",
    0x6100: "PyObject_Call",
    0x3000: "main",
    0x3100: "Py_RunMain",
    0x3300: "builtin_sum",
    0x7000: "__libc_start_main",
    # 0x4000: in the interpreter's text, but no symbol (3.14's unnamed loop part)
}
CODES = {0xA0: "a", 0xB0: "b", 0xC0: "c", 0xD0: "d"}


@dataclass
class FakeNames:
    """PythonNames as the resolver sees it: a target, names from a dict
    (line = the byte offset, to see it arrive), every question recorded."""

    target_of: dict[int, SavedTarget] = field(default_factory=lambda: {PID: TARGET})
    asked: list[tuple[int, int | None]] = field(default_factory=list)

    def target(self, pid: int) -> SavedTarget | None:
        return self.target_of.get(pid)

    def frame(self, pid: int, code: int, byte_offset: int | None) -> PyName | None:
        self.asked.append((code, byte_offset))
        name = CODES.get(code)
        return PyName(name, f"/app/{name}.py", byte_offset or 0, 1) if name else None


def py(code: int, offset: int = 0, entry: bool = False) -> int:
    return PY_FRAME | (PY_ENTRY if entry else 0) | offset << OFFSET_SHIFT | code


def ret(*addresses: int) -> tuple[int, ...]:
    """A leaf-first native stack: the leaf as is, callers as return addresses."""
    return addresses[:1] + tuple(a + 1 for a in addresses[1:])


def names_of(locations: tuple[Location, ...]) -> list[str]:
    return [loc.display_name() for loc in locations]


def resolve(user: tuple[int, ...], names: FakeNames | None = None) -> tuple[Location, ...]:
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}), names or FakeNames())
    return resolver.locations(RawKey(PID, PID, "python3", RawStack(user)))


@pytest.mark.parametrize(
    "native, python, expected",
    [
        pytest.param(
            ret(0x6000, 0x2010, 0x3000, 0x7000),
            (py(0xA0), py(0xB0, entry=True)),
            ["read", "a", "b", "main", "__libc_start_main"],
            id="one activation takes the place of its loop frame",
        ),
        pytest.param(
            ret(0x6000, 0x2010, 0x6100, 0x2020, 0x3000),
            (py(0xA0), py(0xB0, entry=True), py(0xC0, entry=True)),
            ["read", "a", "b", "PyObject_Call", "c", "main"],
            id="each loop frame takes its activation, innermost first",
        ),
        pytest.param(
            ret(0x6000, 0x2010, 0x3000),
            (py(0xA0, entry=True), py(0xB0, entry=True), py(0xC0, entry=True)),
            ["read", "a", "b", "c", "main"],
            id="loop frames ran out: the outermost one takes the rest",
        ),
        pytest.param(
            ret(0x6000, 0x2010, 0x6100, 0x2020, 0x3000),
            (py(0xA0), py(0xB0, entry=True)),
            ["read", "a", "b", "PyObject_Call", "_PyEval_EvalFrameDefault", "main"],
            id="loop frames left over stay native",
        ),
        pytest.param(
            ret(0x2010, 0x2020, 0x6100, 0x4000, 0x2010, 0x3000),
            (py(0xA0, entry=True), py(0xB0, entry=True)),
            ["a", "PyObject_Call", "b", "main"],
            id="adjacent loop frames are one activation",
        ),
        pytest.param(
            ret(0x2010, 0x6100, 0x2010, 0x2020, 0x3000),
            (py(0xA0, entry=True),),
            ["a", "PyObject_Call", "_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault", "main"],
            id="a run left over stays native, every frame of it",
        ),
        pytest.param(
            ret(0x2010, 0x3000),
            (py(0xA0, entry=True),),
            ["a", "main"],
            id="the leaf itself in the loop",
        ),
        pytest.param(
            ret(0x6000, 0x4000, 0x6100, 0x2020, 0x3000),
            (py(0xA0, entry=True), py(0xB0, entry=True)),
            ["read", "a", "PyObject_Call", "b", "main"],
            id="an unnamed address in the interpreter's text is the loop (3.14)",
        ),
        pytest.param(
            ret(0x6000, 0x3300, 0x6100, 0x3100, 0x3000, 0x7000),
            (py(0xA0), py(0xB0, entry=True)),
            [
                "read",
                "builtin_sum",
                "PyObject_Call",
                "a",
                "b",
                "Py_RunMain",
                "main",
                "__libc_start_main",
            ],
            id="no loop frame: leafward of the interpreter's outermost run",
        ),
        pytest.param(
            ret(0x6000, 0x7000),
            (py(0xA0, entry=True),),
            ["read", "__libc_start_main", "a"],
            id="no loop frame and no interpreter frame: the root end",
        ),
        pytest.param(
            (),
            (py(0xA0), py(0xB0)),
            ["a", "b"],
            id="no native frame and a chain cut before its entry",
        ),
    ],
)
def test_splice(native: tuple[int, ...], python: tuple[int, ...], expected: list[str]) -> None:
    assert names_of(resolve(native + python)) == expected


def test_unnamed_text_is_not_the_loop_where_the_symbol_is_the_whole_loop() -> None:
    """Debian's 3.11: a static (unnamed) pymalloc function under
    bytearray() is the leaf; the loop is the named _PyEval_EvalFrameDefault
    further out, and only it gives way to the Python frames."""
    names = FakeNames(target_of={PID: WHOLE})
    locs = resolve((*ret(0x4000, 0x6100, 0x2010, 0x3000), py(0xA0, entry=True)), names)
    assert names_of(locs) == ["prog+0x3000", "PyObject_Call", "a", "main"]


def test_a_python_location_is_a_cpython_frame_with_its_name_file_and_line() -> None:
    (leaf, a, main) = resolve((*ret(0x6000, 0x2010, 0x3000), py(0xA0, 7, entry=True)))
    assert a.kind == CPYTHON and a.address == 0xA0 and a.symbolized
    assert a.mapping is not None and a.mapping.file == "[python3.11]"
    assert (a.mapping.start, a.mapping.limit) == (0, PYTHON_SPACE) and a.mapping.is_cpython
    assert a.frames == (Frame("a", "/app/a.py", 14, 1),)  # byte offset 14 = 7 code units
    assert leaf.kind == main.kind == "native"


def test_no_target_puts_python_frames_at_the_root_end_in_an_unversioned_mapping() -> None:
    locs = resolve((*ret(0x6000, 0x2010), py(0xA0, entry=True)), FakeNames(target_of={}))
    assert names_of(locs) == ["read", "_PyEval_EvalFrameDefault", "a"]
    assert locs[-1].mapping is not None and locs[-1].mapping.file == "[python]"


def test_without_names_every_python_frame_is_kept_by_address() -> None:
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}))
    locs = resolver.locations(RawKey(PID, PID, "p", RawStack((0x6000, py(0xABC, entry=True)))))
    assert names_of(locs) == ["read", "[python code 0xabc]"]
    assert locs[1].kind == CPYTHON and resolver.python_unnamed == 1


def test_an_unnamed_code_object_is_shown_counted_and_asked_again() -> None:
    names = FakeNames()
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}), names)
    key = RawKey(PID, PID, "p", RawStack((*ret(0x6000, 0x2010), py(0xEE, entry=True))))
    for _ in range(2):
        assert names_of(resolver.locations(key)) == ["read", "[python code 0xee]"]
    assert resolver.python_unnamed == 2 and names.asked == [(0xEE, 0), (0xEE, 0)]


def test_python_locations_are_cached_per_code_and_offset_until_forgotten() -> None:
    names = FakeNames()
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}), names)
    stack = (*ret(0x6000, 0x2010), py(0xA0, 1), py(0xA0, 2), py(0xB0, 1, entry=True))

    def run() -> None:
        resolver.locations(RawKey(PID, PID, "p", RawStack(stack)))

    run()
    run()
    assert names.asked == [(0xA0, 2), (0xA0, 4), (0xB0, 2)]
    resolver.forget(PID + 1)  # another process: kept
    run()
    assert len(names.asked) == 3
    resolver.forget(PID)
    run()
    assert len(names.asked) == 6
    resolver.start_interval()  # asked again once an interval: addresses can be reused
    run()
    assert len(names.asked) == 9


def test_a_saturated_offset_asks_for_no_line() -> None:
    names = FakeNames()
    locs = resolve((0x2010, py(0xA0, OFFSET_MAX, entry=True)), names)
    assert names.asked == [(0xA0, None)] and locs[0].frames[0].line == 0


def test_the_python_cache_is_bounded() -> None:
    names = FakeNames()
    resolver = StackResolver(FakeSymbolizer(NATIVE, {}), names, max_cached=2)
    for offset in range(3):
        resolver.locations(RawKey(PID, PID, "p", RawStack((py(0xA0, offset, entry=True),))))
    resolver.locations(RawKey(PID, PID, "p", RawStack((py(0xA0, 2, entry=True),))))
    assert len(names.asked) == 3  # the third was cached after the cache started over
