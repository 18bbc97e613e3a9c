"""The pprof encoder and decoder: round trips, interning, and bad inputs."""

from __future__ import annotations

import gzip
from dataclasses import replace
from typing import Any

import pytest

from agent.errors import InputError, InvalidProfile
from agent.exporters import pprof_pb
from agent.exporters.pprof import decode, encode
from agent.model import Frame, Location, Mapping, Profile, Sample, ValueType
from tests.fake_profiles import KERNEL, SYSCALL, cpu_profile


def message(data: bytes) -> Any:
    return pprof_pb.Profile.FromString(gzip.decompress(data))


def test_round_trip_gives_back_the_same_profile() -> None:
    profile = cpu_profile()
    assert decode(encode(profile)) == profile


def test_raw_protobuf_decodes_like_gzipped() -> None:
    data = encode(cpu_profile())
    assert decode(gzip.decompress(data)) == decode(data)


def test_output_is_deterministic() -> None:
    assert encode(cpu_profile()) == encode(cpu_profile())


def test_tables_are_interned_with_index_zero_reserved() -> None:
    pb = message(encode(cpu_profile()))
    assert pb.string_table[0] == ""
    assert len(set(pb.string_table)) == len(pb.string_table)
    for table in (pb.mapping, pb.location, pb.function):
        assert [row.id for row in table] == list(range(1, len(table) + 1))
    assert [pb.string_table[f.name] for f in pb.function] == ["inner", "work", "main"]
    assert len(pb.location) == 4  # main is shared by all three samples


def test_stacks_are_leaf_first_and_inlined_frames_innermost_first() -> None:
    pb = message(encode(cpu_profile()))
    names = {f.id: pb.string_table[f.name] for f in pb.function}
    by_id = {loc.id: [names[line.function_id] for line in loc.line] for loc in pb.location}
    assert [by_id[i] for i in pb.sample[0].location_id] == [[], ["inner", "work"], ["main"]]
    assert [line.line for line in pb.location[1].line] == [30, 20]


def test_labels_are_strings_for_names_and_numbers_for_ids() -> None:
    pb = message(encode(cpu_profile()))
    labels = {
        pb.string_table[lb.key]: (pb.string_table[lb.str] if lb.str else lb.num)
        for lb in pb.sample[0].label
    }
    assert labels == {"comm": "app-worker", "process": "app", "pid": 42, "tid": 43}


def test_has_functions_only_for_fully_symbolized_mappings() -> None:
    """pprof re-symbolizes mappings without has_functions: the app mapping has
    an unsymbolized frame, so it must say so; a clean one may claim all."""
    symbolized = Location(0x401000, Mapping(0x400000, 0x500000, 0, "/bin/ok"), (Frame("f"),))
    profile = cpu_profile()
    profile.samples.append(Sample((symbolized,), (1, 1)))
    pb = message(encode(profile))
    flags = {pb.string_table[m.filename]: m.has_functions for m in pb.mapping}
    assert flags == {"/usr/bin/app": False, "/bin/ok": True, "[kernel.kallsyms]": False}


def test_kernel_mapping_comes_last_so_pprof_does_not_call_it_the_binary() -> None:
    pb = message(encode(cpu_profile()))
    assert [pb.string_table[m.filename] for m in pb.mapping] == [
        "/usr/bin/app",
        "[kernel.kallsyms]",
    ]


def test_profile_fields_are_encoded() -> None:
    pb = message(encode(cpu_profile()))
    assert pb.string_table[pb.default_sample_type] == "cpu"
    assert (pb.period, pb.duration_nanos) == (10_101_010, 10_000_000_000)
    assert [pb.string_table[c] for c in pb.comment] == ["bpfprof test"]


def test_location_without_mapping_has_mapping_id_zero() -> None:
    loc = Location(0x1234, None, (Frame("jit"),))
    profile = Profile(sample_types=(ValueType("samples", "count"),), samples=[Sample((loc,), (1,))])
    pb = message(encode(profile))
    assert pb.location[0].mapping_id == 0
    assert decode(encode(profile)) == profile


def test_one_location_per_place_whether_objects_are_shared_or_equal() -> None:
    # GIVEN samples holding one Location object, and an equal but distinct one
    m = Mapping(0x1000, 0x2000, 0, "/bin/prog", "ab")
    shared = Location(0x1100, m, (Frame("f"),))
    twin = Location(0x1100, m, (Frame("f"),))
    other = Location(0x1200, m, (Frame("g"),))
    samples = [Sample((shared,), (1,)), Sample((shared, other), (2,)), Sample((twin,), (3,))]
    profile = Profile(sample_types=(ValueType("samples", "count"),), samples=samples)
    # WHEN it is encoded THEN each place is one pprof Location, in first-seen order
    pb = message(encode(profile))
    assert [(loc.id, loc.address) for loc in pb.location] == [(1, 0x1100), (2, 0x1200)]
    assert [list(s.location_id) for s in pb.sample] == [[1], [1, 2], [1]]
    assert decode(encode(profile)) == profile


@pytest.mark.parametrize(
    "broken",
    [
        replace(cpu_profile(), sample_types=()),
        replace(cpu_profile(), default_sample_type="wall"),
        replace(cpu_profile(), samples=[Sample((SYSCALL,), (1,))]),
        replace(cpu_profile(), samples=[Sample((Location(0x10, KERNEL),), (1, 1))]),
    ],
    ids=["no-sample-types", "bad-default", "value-count", "address-outside-mapping"],
)
def test_encode_refuses_an_invalid_profile(broken: Profile) -> None:
    with pytest.raises(InvalidProfile):
        encode(broken)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, world\n", "not a pprof profile"),
        (b"\x48\x01", "string table"),  # a valid message: time_nanos=1, nothing else
        (b"\xff\xff\xff\xff", "not a pprof protobuf"),
        (gzip.compress(b"garbage that is not a protobuf \xff\xfe"), "not a pprof protobuf"),
        (gzip.compress(b""), "empty"),
        (gzip.compress(b"x" * 100)[:20], "corrupt gzip"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (gzip.decompress(encode(cpu_profile()))[:-7], "not a pprof protobuf"),
    ],
    ids=["empty", "text", "other-protobuf", "garbage", "gzip-garbage", "gzip-empty",
         "truncated-gzip", "bad-gzip", "truncated-protobuf"],
)  # fmt: skip
def test_decode_rejects_non_pprof_input_in_one_line(data: bytes, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as err:
        decode(data)
    assert "\n" not in str(err.value)


def minimal(strings: tuple[str, ...] = ("f",), **fields: Any) -> Any:
    """A valid one-sample-type profile message to break one field of."""
    pb = pprof_pb.Profile(string_table=["", "samples", "count", *strings], **fields)
    pb.sample_type.add(type=1, unit=2)
    return pb


@pytest.mark.parametrize(
    ("pb", "reason"),
    [
        (minimal(sample=[pprof_pb.Sample(location_id=[9], value=[1])]), "missing location 9"),
        (minimal(sample=[pprof_pb.Sample(value=[1, 2])]), "2 values for 1 sample types"),
        (minimal(location=[pprof_pb.Location(id=1, mapping_id=4)]), "missing mapping 4"),
        (minimal(location=[pprof_pb.Location(id=1, line=[pprof_pb.Line(function_id=2)])]),
         "missing function 2"),
        (minimal(function=[pprof_pb.Function(id=1, name=99)]), "string index 99"),
        (minimal(function=[pprof_pb.Function(id=0, name=3)]), "function id 0"),
        (minimal(mapping=[pprof_pb.Mapping(id=1), pprof_pb.Mapping(id=1)]), "mapping id 1"),
        (minimal(default_sample_type=-1), "string index -1"),
    ],
)  # fmt: skip
def test_decode_rejects_dangling_ids_as_input_errors(pb: Any, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        decode(pb.SerializeToString())


def test_decode_keeps_what_other_producers_write() -> None:
    """Go-style: several labels, a build id, no period type, file names."""
    pb = minimal(("f", "f.go", "/bin/go", "id9", "k", "v"))
    pb.mapping.add(id=1, memory_start=0x1000, memory_limit=0x2000, filename=5, build_id=6)
    pb.function.add(id=1, name=3, system_name=3, filename=4, start_line=7)
    pb.location.add(id=1, mapping_id=1, address=0x1010).line.add(function_id=1, line=9)
    sample = pb.sample.add(location_id=[1], value=[5])
    sample.label.add(key=7, str=8)
    sample.label.add(key=1, num=12, num_unit=2)
    mapping = Mapping(0x1000, 0x2000, 0, "/bin/go", "id9")
    frame = Frame("f", "f.go", 9, 7, "f")
    assert decode(pb.SerializeToString()) == Profile(
        sample_types=(ValueType("samples", "count"),),
        samples=[Sample((Location(0x1010, mapping, (frame,)),), (5,), {"k": "v"}, {"samples": 12})],
    )
