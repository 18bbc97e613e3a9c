"""The profile model's invariants and the record configuration's validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import RecordConfig, format_from_suffix
from agent.errors import InvalidProfile, UsageError
from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType
from agent.pipeline.builder import cpu_spec

CPU = (ValueType("samples", "count"), ValueType("cpu", "nanoseconds"))
M = Mapping(0x1000, 0x2000, 0, "/bin/x")


def profile(*samples: Sample, default: str = "cpu") -> Profile:
    return Profile(sample_types=CPU, samples=list(samples), default_sample_type=default)


def test_valid_profile_passes() -> None:
    loc = Location(0x1800, M, (Frame("f"),))
    profile(Sample((loc,), (1, 10), {"comm": "x"}, {"pid": 1})).validate()


@pytest.mark.parametrize(
    ("p", "message"),
    [
        (Profile(sample_types=()), "no sample types"),
        (profile(Sample((), (1,))), "has 1 values, expected 2"),
        (profile(Sample((Location(0x5000, M),), (1, 1))), "outside its mapping"),
        (profile(Sample((), (1, 1), {"": "x"})), "empty key"),
        (profile(default="wall"), "default sample type 'wall'"),
        (
            profile(Sample((Location(0x1800, Mapping(0x2000, 0x1000)),), (1, 1))),
            "ends before it starts",
        ),
    ],
)
def test_invalid_profiles_are_named(p: Profile, message: str) -> None:
    with pytest.raises(InvalidProfile, match=message):
        p.validate()


def test_sample_index_by_name_index_and_default() -> None:
    p = profile()
    assert p.sample_index("samples") == 0
    assert p.sample_index("1") == 1
    assert p.sample_index(None) == 1
    assert Profile(sample_types=CPU).sample_index(None) == 1  # last, as pprof
    with pytest.raises(InvalidProfile, match=r"no sample type 'bytes'.*samples, cpu"):
        p.sample_index("bytes")


def test_display_name_of_unsymbolized_location_without_mapping() -> None:
    assert Location(0xABC).display_name() == "0xabc"
    assert not Location(0xABC).symbolized


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"profile_type": "wall"}, "not supported"),
        ({"profile_type": "alloc"}, "--all-processes"),
        ({"profile_type": "alloc", "all_processes": True, "pids": (1,)}, "not both"),
        ({"profile_type": "lock", "min_wait_us": -1}, "must not be negative"),
        ({"alloc_rate": 0}, "--alloc-rate"),
        ({"wait_sampling": 0}, "--wait-sampling"),
        ({"pids": (1,), "command": ("true",)}, "either --pid or a COMMAND"),
        ({"frequency": 0}, "between 1 and 10000"),
        ({"duration": -1.0}, "must be positive"),
        ({"duration": float("nan")}, "must be positive and finite, not nan"),
        ({"duration": float("inf")}, "must be positive and finite, not inf"),
        ({"output_format": "svg"}, "unknown output format"),
        ({"pids": (0,)}, "positive process id"),
    ],
)
def test_bad_record_options_are_usage_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        RecordConfig(**kwargs)  # type: ignore[arg-type]


def test_period_from_frequency() -> None:
    assert cpu_spec(99).period == 10_101_010


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("p.pb.gz", "pprof"), ("p.pprof", "pprof"), ("x/p.folded", "folded"), ("p.txt", "folded")],
)
def test_format_from_suffix(name: str, fmt: str) -> None:
    assert format_from_suffix(Path(name)) == fmt


def test_unknown_suffix_says_what_to_do() -> None:
    with pytest.raises(UsageError, match="--format"):
        format_from_suffix(Path("profile.json"))
