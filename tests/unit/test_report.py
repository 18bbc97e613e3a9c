"""`bpfprof top`: pprof's -top numbers, layout and units."""

from __future__ import annotations

import pytest

from agent.errors import InvalidProfile
from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType
from agent.tools.report import format_top, percentage, scaled_label
from tests.fake_profiles import KERNEL, cpu_profile

TOP_CPU = """\
Type: cpu
Duration: 10s
Total: 60.61ms
Showing top 5 of 5 functions
      flat  flat%   sum%        cum   cum%  name
   30.30ms 50.00% 50.00%    30.30ms 50.00%  [kernel.kallsyms]
   20.20ms 33.33% 83.33%    50.51ms 83.33%  inner
   10.10ms 16.67%   100%    10.10ms 16.67%  [app]
         0     0%   100%    60.61ms   100%  main
         0     0%   100%    50.51ms 83.33%  work
"""


def test_top_golden() -> None:
    assert format_top(cpu_profile()) == TOP_CPU


def test_top_by_cum_with_a_count_and_another_sample_type() -> None:
    lines = format_top(cpu_profile(), "samples", count=2, by_cum=True).splitlines()
    assert lines[2:] == [
        "Total: 6",
        "Showing top 2 of 5 functions",
        "      flat  flat%   sum%        cum   cum%  name",
        "         0     0%     0%          6   100%  main",
        "         2 33.33% 33.33%          5 83.33%  inner",
    ]


def test_cum_counts_a_recursive_function_once_per_sample() -> None:
    """GIVEN fib -> fib -> fib -> main, WHEN ranked, fib's cum is the sample's value."""
    fib, main = Location(2, None, (Frame("fib"),)), Location(1, None, (Frame("main"),))
    profile = Profile(
        sample_types=(ValueType("samples", "count"),), samples=[Sample((fib, fib, fib, main), (7,))]
    )
    rows = format_top(profile).splitlines()[-2:]
    assert rows == [
        "         7   100%   100%          7   100%  fib",
        "         0     0%   100%          7   100%  main",
    ]


def test_unnamed_code_is_one_row_per_mapping_as_in_pprof() -> None:
    """GIVEN unsymbolized addresses in two binaries, the kernel and none,
    WHEN ranked, THEN each mapping is one row (pprof's `[file]`), an address
    without a mapping is `<unknown>`, and cum counts a mapping once per sample."""
    app = Mapping(0x400000, 0x500000, 0x1000, "/usr/bin/app")
    libz = Mapping(0x7F0000, 0x800000, 0, "/lib/libz.so.1")
    main = Location(0x401000, app, (Frame("main"),))
    a1, a2 = Location(0x403000, app), Location(0x403010, app)
    z1, z2 = Location(0x7F0100, libz), Location(0x7F0110, libz)
    k1 = Location(0xFFFFFFFF81001000, KERNEL)
    k2 = Location(0xFFFFFFFF81001010, KERNEL)
    stacks = [(a1, main), (a2, main), (z1, main), (z2, main), (k1, main), (k2, main)]
    samples = [Sample(st, (i + 1,)) for i, st in enumerate(stacks)]
    samples += [Sample((z1, a1, a2, main), (5,)), Sample((Location(0x1234), main), (2,))]
    profile = Profile(sample_types=(ValueType("samples", "count"),), samples=samples)
    assert format_top(profile).splitlines()[2:] == [
        "Showing top 5 of 5 functions",
        "      flat  flat%   sum%        cum   cum%  name",
        "        12 42.86% 42.86%         12 42.86%  [libz.so.1]",
        "        11 39.29% 82.14%         11 39.29%  [kernel.kallsyms]",
        "         3 10.71% 92.86%          8 28.57%  [app]",
        "         2  7.14%   100%          2  7.14%  <unknown>",
        "         0     0%   100%         28   100%  main",
    ]


def test_unknown_sample_index_is_a_one_line_error() -> None:
    with pytest.raises(InvalidProfile, match=r"no sample type 'wall' in this profile \(it has"):
        format_top(cpu_profile(), "wall")


@pytest.mark.parametrize(
    ("value", "unit", "label"),
    [
        (1_230_000_000, "nanoseconds", "1.23s"),
        (450_000_000, "nanoseconds", "450ms"),
        (1_500, "nanoseconds", "1.50us"),
        (7_200 * 10**9, "nanoseconds", "2hrs"),
        (2_500, "microseconds", "2.50ms"),
        (1_572_864, "bytes", "1.50MB"),
        (12_288, "bytes", "12kB"),
        (-12_288, "bytes", "-12kB"),
        (100, "bytes", "100B"),
        (1_234, "count", "1234"),
        (0, "nanoseconds", "0"),
    ],
)
def test_values_are_scaled_like_pprof(value: int, unit: str, label: str) -> None:
    assert scaled_label(value, unit) == label


@pytest.mark.parametrize(
    ("value", "total", "text"),
    [
        (1, 1, "  100%"),
        (2, 3, "66.67%"),
        (51, 10_000, " 0.51%"),
        (0, 5, "    0%"),
        (3, 0, "    0%"),
    ],
)
def test_percentages_are_six_columns_like_pprof(value: int, total: int, text: str) -> None:
    assert percentage(value, total) == text
