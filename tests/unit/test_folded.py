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
        f"main;app+0x4345 {PERIOD}\n"
        f"main;work;inner {2 * PERIOD}\n"
        f"main;work;inner;[kernel.kallsyms]+0x1000 {3 * PERIOD}\n"
    )


@pytest.mark.parametrize("index", ["samples", 0, "0"])
def test_sample_index_by_name_or_number(index: str | int) -> None:
    assert encode(cpu_profile(), index).splitlines()[1] == "main;work;inner 2"


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


def test_empty_profile_is_empty_text() -> None:
    assert encode(Profile(sample_types=COUNT)) == ""
