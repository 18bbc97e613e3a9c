"""Folded stacks: the text flamegraph.pl, speedscope and inferno read."""

from __future__ import annotations

import pytest

from agent.errors import InvalidProfile
from agent.exporters.folded import encode
from agent.model import Frame, Location, Profile, Sample, ValueType
from tests.fake_profiles import PERIOD, cpu_profile

COUNT = (ValueType("samples", "count"),)


def test_default_sample_type_golden() -> None:
    assert encode(cpu_profile()) == (
        f"app;main;app+0x4345 {PERIOD}\n"
        f"app;main;work;inner {2 * PERIOD}\n"
        f"app;main;work;inner;[kernel.kallsyms]+0x1000 {3 * PERIOD}\n"
    )


@pytest.mark.parametrize("index", ["samples", 0, "0"])
def test_sample_index_by_name_or_number(index: str | int) -> None:
    assert encode(cpu_profile(), index).splitlines()[1] == "app;main;work;inner 2"


def test_unknown_sample_type_names_the_known_ones() -> None:
    with pytest.raises(InvalidProfile, match=r"no sample type 'wall'.*samples, cpu"):
        encode(cpu_profile(), "wall")


def test_identical_stacks_are_summed_and_zero_totals_dropped() -> None:
    f, g = Location(1, None, (Frame("f"),)), Location(2, None, (Frame("g"),))
    profile = Profile(
        sample_types=COUNT,
        samples=[
            Sample((f,), (2,)),
            Sample((f,), (3,)),
            Sample((g,), (4,)),
            Sample((g,), (-4,)),
            Sample((g, f), (0,)),
        ],
    )
    assert encode(profile) == "f 5\n"


def test_names_cannot_break_the_format() -> None:
    weird = Location(1, None, (Frame("operator;()"), Frame("a\nb"), Frame("")))
    profile = Profile(sample_types=COUNT, samples=[Sample((weird,), (1,)), Sample((), (2,))])
    assert encode(profile) == "[unknown] 2\n[unknown];a b;operator:() 1\n"


def test_the_process_is_the_root_frame_as_in_perf_and_bcc_folded_output() -> None:
    """GIVEN one stack in two processes, a process known by its thread name
    only, and a sample with no labels, THEN each process is its stack's root
    frame (its executable's name, else the thread's), made safe like any name."""
    f, g = Location(1, None, (Frame("f"),)), Location(2, None, (Frame("g"),))
    profile = Profile(
        sample_types=COUNT,
        samples=[
            Sample((g, f), (1,), {"process": "db", "comm": "db-worker"}, {"pid": 7}),
            Sample((g, f), (2,), {"process": "app", "comm": "app"}, {"pid": 8}),
            Sample((g, f), (4,), {"process": "app", "comm": "app-io"}, {"pid": 8}),
            Sample((f,), (8,), {"comm": "kworker/0:1"}, {"pid": 9}),
            Sample((f,), (16,), {"process": "a;b"}),
            Sample((f,), (32,)),
        ],
    )
    assert encode(profile) == "a:b;f 16\napp;f;g 6\ndb;f;g 1\nf 32\nkworker/0:1;f 8\n"


def test_empty_profile_is_empty_text() -> None:
    assert encode(Profile(sample_types=COUNT)) == ""
