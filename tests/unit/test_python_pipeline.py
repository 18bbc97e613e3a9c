"""Python frames through the collection core, a capture and its replay.

A live /usr/bin/python3 child (test_python_names.py's) is announced by a
fake source that also reports two of its code objects as a BPF walker
would; its samples end in tagged Python frames under a native frame in the
child's own `_PyEval_EvalFrameDefault`. The child exits before the profile
is built (as a short script does before the agent's interval ends): the
names read at poll time must still be there, and a capture of it must
replay, with no process, to the same profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import SourceOptions
from agent.exporters import folded
from agent.model import CPYTHON, RawKey, RawSample, RawStack
from agent.pipeline.builder import cpu_spec
from agent.pipeline.core import Collection
from agent.record.capture import Capture
from agent.record.recorder import report_python
from agent.record.replay import replay
from agent.sources.base import PythonCodeSource
from symbolizer import parse_maps, read_maps
from symbolizer.cpython.target import PythonTarget, TargetFinder
from tests.fake_sources import FakeSource
from tests.unit.test_python_names import Child, spawn
from tests.unit.test_python_splice import py


@dataclass
class FakePythonSource(FakeSource):
    """A source whose walker met `codes` (handed over once)."""

    codes: list[tuple[int, int]] = field(default_factory=list)

    def python_codes(self) -> list[tuple[int, int]]:
        out, self.codes = self.codes, []
        return out


def stack_of(child: Child) -> RawStack:
    """A native leaf in the loop, then `inner` called by `Klass.method`,
    both run by that one activation; `flat` by the next one out, whose
    loop frame the native unwinder did not reach."""
    target = TargetFinder().find(child.pid, parse_maps(read_maps(child.pid)))
    assert isinstance(target, PythonTarget)
    lo, _ = target.eval_ranges[0]
    return RawStack(
        (
            lo + 0x10,
            py(child.code("inner"), 2),
            py(child.code("method"), 0, entry=True),
            py(child.code("flat"), 0, entry=True),
        )
    )


def test_names_read_at_poll_outlive_the_process_and_replay_from_a_capture(
    tmp_path: Path,
) -> None:
    with spawn(tmp_path) as child:
        pid = child.pid
        sample = RawSample(RawKey(pid, pid, "python3", stack_of(child)), (5,))
        inner = FakePythonSource([[sample]], seen=[pid])
        inner.codes = [(pid, child.code(k)) for k in ("inner", "method", "flat")]
        capture = Capture(tmp_path / "cap", binaries=True)
        source = capture.wrap(inner)
        assert isinstance(source, PythonCodeSource)
        core = Collection({"cpu": (source, cpu_spec(99))}, on_maps=capture.note_maps)
        core.poll(0)
        child.end()
        raw = core.drain()["cpu"]
    profile = core.build("cpu", raw, 1, 2)
    (s,) = profile.samples
    python = [loc for loc in s.locations if loc.kind == CPYTHON]
    assert [loc.frames[0].function for loc in python] == [
        "outer.<locals>.inner",
        "Klass.method",
        "flat",
    ]
    assert python[0].frames[0].file == child.codes["inner"]["file"]
    assert python[0].frames[0].line == child.codes["inner"]["lines"]["2"]
    assert python[0].mapping is not None and python[0].mapping.file == "[python3.11]"
    counters = core.counters()["python"]
    assert counters["python_prefetched"] == 3 and counters["python_gone_answers"] == 3
    assert counters["python_code_misses"] == 0

    capture.save(
        "cpu", SourceOptions(frequency=99), 1, 2, {}, core.symbolizer, lambda p: "", core.python
    )
    replayed = replay(tmp_path / "cap")
    assert folded.encode(replayed, "samples") == folded.encode(profile, "samples")
    assert folded.encode(profile, "samples") == (
        "python3.11;flat;Klass.method;outer.<locals>.inner 5\n"
    )
    assert replayed.samples[0].locations == s.locations


def test_a_process_the_driver_does_not_want_gets_no_python_names(tmp_path: Path) -> None:
    with spawn(tmp_path) as child:
        wanted = {"yes": True}
        core = Collection({}, wants=lambda facts: wanted["yes"])
        core.on_new_process(child.pid)
        assert core.python.target(child.pid) is not None
        wanted["yes"] = False
        core.maps_seen.clear()  # announced again, e.g. after an exec
        core.on_new_process(child.pid)
        assert core.python.target(child.pid) is None
        wanted["yes"] = True
        core.maps_seen.clear()
        core.on_new_process(child.pid)
        core.forget(child.pid)
        assert core.python.target(child.pid) is None and len(core.python) == 0


def test_record_warns_once_about_python_frames_without_a_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report_python({"python_code_misses": 0})
    assert not caplog.records
    report_python({"python_code_misses": 4, "python_no_target": 1, "python_never_decoded": 3})
    (record,) = caplog.records
    assert record.getMessage().startswith("4 Python frames got no name (no interpreter found: 1")
